"""Where sed-ray reads and writes: local folders or object storage (s3://, gs://), one module for both.

Every path a user gives (shards, run storage, checkpoints, evaluation outputs) goes through `location()`:
a local path becomes an absolute `pathlib.Path`; an object-store URI becomes a `RemotePath`, which has the
few pathlib methods sed-ray uses (`/`, `name`, `parent`, `exists`, `is_dir`, `glob`, `read_text`,
`write_text`, `mkdir`, `unlink`). Code above this module handles both alike and never parses a URI.
Readers that take a pyarrow filesystem get one with `arrow()`; code that needs real local files (model
loading) gets them with `local_copy()`.

Credentials and endpoints come only from the environment, read by pyarrow's S3 and GCS filesystems:
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` (S3-compatible
stores such as MinIO), an AWS profile or instance role; Google's application-default credentials.

Writes are whole or absent: a local file is written under a temporary name and renamed into place; an
object is one PUT (or a multipart upload), which object stores make visible only once complete.
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import os
import shutil
import socket
import tempfile
from pathlib import Path, PurePosixPath
from typing import Union

import pyarrow.fs as pafs

SCHEMES = ("s3", "gs")


def is_remote(where: object) -> bool:
    return isinstance(where, RemotePath) or (isinstance(where, str) and where.split("://", 1)[0] in SCHEMES
                                             and "://" in where)


def is_relative(where: object) -> bool:
    """A local path given relative to the working directory (resolved differently on every node)."""
    return not is_remote(where) and not Path(str(where)).expanduser().is_absolute()


def location(where: Union[str, os.PathLike, "RemotePath"]) -> Union[Path, "RemotePath"]:
    """A local path (expanded, absolute) or an object-store location."""
    if isinstance(where, RemotePath):
        return where
    text = str(where)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if scheme not in SCHEMES:
            raise ValueError(f"{text}: unsupported storage scheme {scheme}:// (use a local path, s3:// or gs://)")
        return RemotePath(text)
    return Path(text).expanduser().resolve()


def uri(where) -> str:
    """The canonical text of a location: an absolute local path or the object-store URI."""
    return str(location(where))


class RemotePath:
    """An object-store location: scheme, bucket and key, with the pathlib methods sed-ray needs."""

    def __init__(self, text: str) -> None:
        scheme, rest = text.split("://", 1)
        parts = [p for p in rest.split("/") if p]
        if not parts:
            raise ValueError(f"{text}: no bucket named (expected {scheme}://BUCKET/PATH)")
        self.scheme, self.bucket, self.key = scheme, parts[0], "/".join(parts[1:])

    # -- naming
    @property
    def _path(self) -> str:  # the path inside the filesystem: bucket/key
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def __str__(self) -> str:
        return f"{self.scheme}://{self._path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part) -> "RemotePath":
        return RemotePath(f"{self}/{str(part).strip('/')}")

    @property
    def name(self) -> str:
        return PurePosixPath(self._path).name

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(f"{self.scheme}://{PurePosixPath(self._path).parent}") if self.key else self

    @property
    def parents(self) -> list["RemotePath"]:
        found, current = [], self
        while current.key:
            current = current.parent
            found.append(current)
        return found

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    # -- the filesystem
    @property
    def fs(self) -> pafs.FileSystem:
        return _filesystem(self.scheme)

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self._path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def iterdir(self) -> list["RemotePath"]:
        selector = pafs.FileSelector(self._path, recursive=False, allow_not_found=True)
        return sorted((RemotePath(f"{self.scheme}://{i.path}") for i in self.fs.get_file_info(selector)), key=str)

    def glob(self, pattern: str) -> list["RemotePath"]:
        """Direct children whose name matches `pattern` (one level, like the pathlib globs used here)."""
        return [p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern)]

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self._path) as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        with self.fs.open_output_stream(self._path) as f:
            f.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def upload(self, local_file: str | os.PathLike) -> None:
        pafs.copy_files(str(local_file), self._path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no folders: a key's prefix exists once something is written under it."""

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        self.fs.delete_file(self._path)

    def rmtree(self) -> None:
        if self.exists():
            self.fs.delete_dir(self._path)


_FILESYSTEMS: dict[tuple, pafs.FileSystem] = {}
_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS")


def _filesystem(scheme: str) -> pafs.FileSystem:
    """One filesystem per scheme and environment, configured from the environment by pyarrow."""
    key = (scheme, *(os.environ.get(k) for k in _ENV_KEYS))
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = pafs.FileSystem.from_uri(f"{scheme}://")[0] if scheme == "s3" else pafs.GcsFileSystem()
    return _FILESYSTEMS[key]


def arrow(where) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for readers and writers that take one (pyarrow, Ray Data)."""
    place = location(where)
    if isinstance(place, RemotePath):
        return place.fs, place._path
    return pafs.LocalFileSystem(), str(place)


def arrow_paths(places: list) -> tuple[pafs.FileSystem | None, list[str]]:
    """One filesystem and the paths inside it for a list of files on the same store."""
    if not places:
        return None, []
    pairs = [arrow(p) for p in places]
    return pairs[0][0], [p for _fs, p in pairs]


def upload_folder(local_dir: str | os.PathLike, where, last: tuple[str, ...] = ()) -> None:
    """Copy a local folder's files to `where`; the files named in `last` go after all others, so a reader
    that waits for them (a summary, a metrics file) finds everything else already there."""
    place = location(where)
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    files = [p for p in files if p.name not in last] + [p for name in last for p in files if p.name == name]
    for path in files:
        target = place / path.relative_to(local_dir).as_posix()
        if isinstance(target, RemotePath):
            target.upload(path)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


_COPIES: list[str] = []


def local_copy(where) -> Path:
    """A local folder (or file) holding what `where` holds: local paths as they are, object-store ones
    downloaded into a fresh temporary folder, removed at exit (`pretrained_source` caches per process)."""
    place = location(where)
    if not isinstance(place, RemotePath):
        return place
    kind = place._info().type
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{place}: nothing there")
    target = Path(tempfile.mkdtemp(prefix="sed-ray-copy-")) / (place.name or place.bucket)
    if not _COPIES:
        atexit.register(lambda: [shutil.rmtree(Path(p).parent, ignore_errors=True) for p in _COPIES])
    _COPIES.append(str(target))
    if kind == pafs.FileType.Directory:
        target.mkdir(parents=True)
    pafs.copy_files(place._path, str(target), source_filesystem=place.fs, destination_filesystem=pafs.LocalFileSystem())
    return target


@functools.lru_cache(maxsize=16)
def pretrained_source(name_or_path: str) -> str:
    """What to hand `from_pretrained`: a hub id or local folder as it is; an object-store folder (a tiny
    base a run built in its storage) downloaded once per process."""
    return str(local_copy(name_or_path)) if is_remote(name_or_path) else name_or_path


# -- checks before anything starts ---------------------------------------------------------------------

_AWS_SOURCES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def _reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _credentials_problem(scheme: str) -> str | None:
    """None when some credential source is there: the environment, a profile file, or (on a cloud VM)
    the instance metadata service that hands out an instance role's credentials."""
    if scheme == "s3":
        if any(os.environ.get(k) for k in _AWS_SOURCES):
            return None
        files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
                 os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")]
        if any(Path(f).expanduser().exists() for f in files):
            return None
        if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true" and _reachable("169.254.169.254", 80):
            return None
        return ("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for "
                "an S3-compatible store), AWS_PROFILE, or run where an instance role provides them")
    if scheme == "gs":
        adc = Path("~/.config/gcloud/application_default_credentials.json").expanduser()
        if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or adc.exists() or _reachable("169.254.169.254", 80):
            return None
        return ("no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run "
                "`gcloud auth application-default login`, or run on a GCP VM with a service account")
    return None


def problem(where, key: str, must_exist: bool = False) -> str | None:
    """Why `where` cannot be used (as the config key or flag `key`), or None: an unknown scheme, missing
    credentials, an unreachable endpoint, a bucket that does not exist, or (with must_exist) nothing there.
    Cheap: one metadata request for object stores, nothing but a stat locally."""
    try:
        place = location(where)
    except ValueError as exc:
        return f"{key}: {exc}"
    if not isinstance(place, RemotePath):
        if must_exist and not place.exists():
            return f"{key}: {place} does not exist"
        return None
    missing = _credentials_problem(place.scheme)
    if missing:
        return f"{key}: {place}: {missing}"
    endpoint = os.environ.get("AWS_ENDPOINT_URL") if place.scheme == "s3" else None
    where_text = f" at {endpoint} (AWS_ENDPOINT_URL)" if endpoint else ""
    try:
        bucket = place.fs.get_file_info(place.bucket)
        if bucket.type == pafs.FileType.NotFound:
            return (f"{key}: bucket {place.bucket!r} does not exist{where_text}: check the spelling of {place} "
                    "or create the bucket")
        if must_exist and not place.exists():
            return f"{key}: {place} does not exist"
    except OSError as exc:
        text = str(exc)
        if "NETWORK_CONNECTION" in text or "connect" in text.lower():
            return (f"{key}: cannot reach the object store{where_text} for {place}: check the endpoint and the "
                    f"network ({text.splitlines()[0][:200]})")
        if "ACCESS_DENIED" in text or "403" in text or "credentials" in text.lower():
            return (f"{key}: access to {place} denied: check the credentials in the environment "
                    f"({text.splitlines()[0][:200]})")
        return f"{key}: {place}: {text.splitlines()[0][:300]}"
    return None


def require(where, key: str, must_exist: bool = False) -> None:
    """Raise `problem(...)` as a ValueError naming `key`, before anything starts."""
    found = problem(where, key, must_exist)
    if found:
        raise ValueError(found)
