"""Rendering a report page in a real headless Chromium, for the tests that check HTML output."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
MISSING = "no Chromium: install Debian's `chromium` package (apt-get install chromium) to render pages in a real browser"


def dump_dom(page: Path, profile: Path) -> subprocess.CompletedProcess:
    """The page's DOM after load (scripts run), from a fresh profile; fails the test on a browser error."""
    result = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def figures_loaded(dom: str) -> tuple[int, int]:
    """(figures the page expects, figures that decoded), from the page's own check."""
    expected = int(re.search(r'data-figures-expected="(\d+)"', dom)[1])
    loaded = re.search(r'data-figures-loaded="(\d+)"', dom)
    return expected, int(loaded[1]) if loaded else -1
