"""The explainability report: a self-contained HTML page (figures embedded as data URIs, and also
written as PNG files beside it) with the metrics, confusion matrix, per-class recall, sample
explanations, training curves, and 2-D projections of Z_con and Z_des with silhouette scores.

The disentanglement check (the paper's suggestion): Z_des should cluster by emotion more than Z_con
does; the silhouette score of each latent by emotion and by speaker quantifies it.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from sed_ray.files import atomic_write_text
from sed_ray.storage import location


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


# The page checks itself: how many of its figures decoded (the browser tests read this attribute).
FIGURES_LOADED_SCRIPT = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.querySelectorAll("img.figure"));
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.setAttribute("data-figures-loaded", String(loaded));
});
</script>"""


def figures_html(figures: list[tuple[str, str, bytes]]) -> str:
    """(file stem, caption, PNG) -> inline <figure>s, each linking its PNG under figures/."""
    return "".join(
        f"<figure><img class='figure' alt='{html.escape(caption)}' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{html.escape(caption)} (<a href='figures/{stem}.png'>PNG</a>)</figcaption></figure>"
        for stem, caption, png in figures)


def confusion_figure(confusion: dict) -> bytes:
    import matplotlib.pyplot as plt

    labels, matrix = confusion["labels"], np.array(confusion["matrix"], dtype=float)
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 1.0 + 0.8 * len(labels)))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center",
                    color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix (colour: row-normalised)")
    return figure_png(fig)


def recall_figure(per_class: dict, chance: float) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(per_class), 3))
    ax.bar(list(per_class), list(per_class.values()), color="#4c72b0")
    ax.axhline(chance, color="grey", linestyle="--", label=f"chance {chance:.2f}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.set_title("Per-class recall")
    ax.legend()
    return figure_png(fig)


def curves_figure(metrics: list[dict]) -> bytes | None:
    import matplotlib.pyplot as plt

    train = [m for m in metrics if "loss" in m and "step" in m]
    if not train:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    steps = [m["step"] for m in train]
    axes[0].plot(steps, [m["ce"] for m in train], label="cross-entropy")
    for branch in ("content", "descriptor"):
        points = [(m["step"], m[f"kl_{branch}"]) for m in train if f"kl_{branch}" in m]
        if points:
            axes[1].plot(*zip(*points), label=f"KL {branch}")
    axes[1].set_yscale("log")
    axes[2].plot(steps, [m["beta"] for m in train], label="beta")
    axes[2].set_yscale("log")
    validation = [m for m in metrics if "val_ua" in m]
    if validation:
        twin = axes[0].twinx()
        twin.plot([m["step"] for m in validation], [m["val_ua"] for m in validation], "o-", color="C3", label="valid UA")
        twin.set_ylim(0, 1)
        twin.legend(loc="upper right")
    for ax, title in zip(axes, ("Training loss", "KL per frame", "beta")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(loc="upper left" if ax is not axes[0] else "lower left")
    return figure_png(fig)


def projection(latents: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE when there are enough points, PCA otherwise."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if len(latents) >= 30:
        return TSNE(n_components=2, perplexity=min(30, len(latents) // 4), random_state=seed,
                    init="pca").fit_transform(latents)
    return PCA(n_components=2, random_state=seed).fit_transform(latents)


def silhouette(latents: np.ndarray, labels: list) -> float | None:
    from sklearn.metrics import silhouette_score

    if len(set(labels)) < 2 or len(set(labels)) >= len(labels):
        return None
    return float(silhouette_score(latents, labels))


def latent_figure(z: dict[str, np.ndarray], emotions: list[str], speakers: list[str]) -> tuple[bytes, dict]:
    import matplotlib.pyplot as plt

    scores = {}
    fig, axes = plt.subplots(2, 2, figsize=(11, 9))
    for row, (branch, latents) in enumerate(z.items()):
        points = projection(latents)
        for col, (name, labels) in enumerate((("emotion", emotions), ("speaker", speakers))):
            score = silhouette(latents, labels)
            scores[f"{branch}_by_{name}"] = score
            ax = axes[row, col]
            categories = sorted(set(labels))
            cmap = plt.get_cmap("tab10" if len(categories) <= 10 else "tab20")
            for k, category in enumerate(categories):
                mask = np.array([label == category for label in labels])
                ax.scatter(points[mask, 0], points[mask, 1], s=12, color=cmap(k % cmap.N),
                           label=category if len(categories) <= 12 else None)
            title = f"Z_{'con' if branch == 'content' else 'des'} by {name}"
            ax.set_title(f"{title} (silhouette {score:.3f})" if score is not None else title)
            ax.set_xticks([])
            ax.set_yticks([])
            if len(categories) <= 12:
                ax.legend(fontsize=7, markerscale=1.5)
    fig.suptitle("2-D projection of the pooled latents (Z_des should separate emotions better than Z_con)")
    return figure_png(fig), scores


def _listening_html(listening: dict | None) -> str:
    if not listening:
        return ""

    def cell(value):
        return "n/a" if value is None else f"{value:.4f}"

    columns = [("whole target", listening)] + [(field, figures) for field, figures in (listening.get("fields") or {}).items()]
    rows = [("own audio", "own_audio"), ("silence of the same length", "silence"),
            ("another utterance's audio", "other_audio"), ("gain of own audio over silence", "gain_over_silence"),
            ("gain of own audio over another's", "gain_over_other_audio")]
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
    body = "".join(f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{cell(figures.get(key))}</td>" for _, figures in columns)
                   + "</tr>" for label, key in rows)
    return (f"<h2>Listening check</h2><p>Reference targets' negative log-likelihood, nats per token (teacher-forced, "
            f"{listening['utterances']} utterances), given different audio, for the whole target and for each of its "
            f"fields. Own audio no better than silence of the same length means the model hears only how long the "
            f"utterance is; the descriptor column says whether what it hears shapes the description.</p>"
            f"<table><tr><th></th>{head}</tr>{body}</table>")


def write_report(out: str | Path, metrics: dict, predictions: list[dict], *, title: str,
                 training_metrics: list[dict] | None = None, sample_size: int = 24) -> Path:
    """Write OUT/report.html and OUT/figures/*.png (a local folder or object storage); returns the HTML path."""
    out = location(out)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str, bytes]] = []
    if metrics.get("confusion"):
        figures.append(("confusion", "Confusion matrix", confusion_figure(metrics["confusion"])))
    if metrics.get("per_class_recall"):
        chance = 1 / max(len(metrics["per_class_recall"]), 1)
        figures.append(("recall", "Per-class recall", recall_figure(metrics["per_class_recall"], chance)))
    if training_metrics:
        curve = curves_figure(training_metrics)
        if curve:
            figures.append(("curves", "Training curves", curve))
    with_z = [p for p in predictions if p.get("z_content") is not None and p.get("z_descriptor") is not None]
    if len(with_z) >= 4:
        z = {b: np.array([p[f"z_{b}"] for p in with_z], dtype=np.float32) for b in ("content", "descriptor")}
        png, scores = latent_figure(z, [str(p.get("emotion_true")) for p in with_z],
                                    [str(p.get("speaker")) for p in with_z])
        metrics.setdefault("silhouette", scores)
        figures.append(("latents", "Latent projections", png))
    for name, _, png in figures:
        (figures_dir / f"{name}.png").write_bytes(png)

    esc = html.escape
    sample = predictions[:sample_size]
    # Next to the descriptor the emotion was scored after: the model's other descriptor, where it differs
    # (the LLM's generated one when the emotion followed the draft, the draft when it followed the LLM).
    others = [(key, header) for key, header in (("descriptor_draft", "descriptor draft (retrieved)"),
                                                ("descriptor_generated", "descriptor the LLM generated"))
              if any(p.get(key) is not None and p.get(key) != p.get("descriptor_hyp") for p in sample)]
    rows = "".join(
        f"<tr><td>{esc(str(p.get('id')))}</td><td>{esc(str(p.get('emotion_true')))}</td>"
        f"<td class='{'ok' if p.get('emotion_true') == p.get('emotion_pred') else 'bad'}'>{esc(str(p.get('emotion_pred')))}</td>"
        f"<td>{esc(str(p.get('descriptor_ref') or ''))}</td><td>{esc(str(p.get('descriptor_hyp') or ''))}</td>"
        + "".join(f"<td>{esc(str(p.get(key) or ''))}</td>" for key, _ in others) +
        f"<td>{esc(str(p.get('text_ref') or ''))}</td><td>{esc(str(p.get('text_hyp') or ''))}</td></tr>"
        for p in sample)
    keys = ("ua", "wa", "macro_f1", "wer", "bleu4", "meteor", "rouge_l", "cider", "spice")
    table = "".join(f"<tr><th>{k}</th><td>{'n/a' if metrics.get(k) is None else f'{metrics[k]:.4f}'}</td></tr>"
                    for k in keys)
    silhouettes = "".join(f"<tr><th>{esc(k)}</th><td>{'n/a' if v is None else f'{v:.3f}'}</td></tr>"
                          for k, v in (metrics.get("silhouette") or {}).items())
    notes = "".join(f"<li>{esc(n)}</li>" for n in metrics.get("notes", []))
    listening = _listening_html(metrics.get("listening"))
    images = figures_html(figures)
    other_headers = "".join(f"<th>{header}</th>" for _, header in others)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
td.ok {{ background: #e6f4ea; }} td.bad {{ background: #fce8e6; }}
img.figure {{ max-width: 100%; border: 1px solid #ddd; }} figure {{ margin: 1.5rem 0; }}
</style></head>
<body data-figures-expected="{len(figures)}">
<h1>{esc(title)}</h1>
<p>{metrics.get('n', {}).get('records', len(predictions))} utterances. UA is the mean per-class recall; chance is
{'n/a' if not metrics.get('per_class_recall') else f"{1 / len(metrics['per_class_recall']):.2f}"}.</p>
<h2>Metrics</h2><table>{table}</table>
{listening}
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
{f'<h2>Disentanglement (silhouette of pooled latents)</h2><table>{silhouettes}</table>' if silhouettes else ''}
<h2>Figures</h2>{images}
<h2>Explanations: a sample of utterances</h2>
<table><tr><th>id</th><th>true emotion</th><th>predicted</th><th>reference descriptor</th><th>predicted descriptor (the emotion follows it)</th>{other_headers}
<th>reference transcript</th><th>predicted transcript</th></tr>{rows}</table>
{FIGURES_LOADED_SCRIPT}
</body></html>
"""
    return atomic_write_text(out / "report.html", page)
