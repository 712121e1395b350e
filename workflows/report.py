"""Reports people look at: accuracy vs shots and a confusion matrix, as PNG and one HTML page."""

from __future__ import annotations

import base64
import html
import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from workflows.fewshot_eval import BASELINES, SweepResult  # noqa: E402

#: Class names, dataset and expert names are user text: ``$`` is a literal dollar, never mathtext
#: (a class folder named ``$\badcmd$`` would otherwise raise in matplotlib and lose the whole report).
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}


@plt.rc_context(LITERAL_TEXT)
def plot_accuracy_vs_shots(result: SweepResult, path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for method, by_shots in result.table().items():
        shots = list(by_shots)
        mean = np.array([by_shots[s][0] for s in shots]) * 100
        std = np.array([by_shots[s][1] for s in shots]) * 100
        style = {"linestyle": "--"} if method in BASELINES else {"marker": "o"}
        (line,) = ax.plot(shots, mean, label=method, **style)
        # each band in its line's colour, and only the methods' (the baselines' would bury them)
        if method not in BASELINES:
            ax.fill_between(shots, mean - std, mean + std, alpha=0.08, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xticks(
        sorted({r["shots"] for r in result.rows}), labels=[str(s) for s in sorted({r["shots"] for r in result.rows})]
    )
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(textwrap.fill(title or "Few-shot accuracy (mean ± std over seeds)", 70), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@plt.rc_context(LITERAL_TEXT)
def plot_confusion(confusion: list[list[int]], classnames: list[str], path: Path, title: str) -> Path:
    matrix = np.asarray(confusion)
    size = max(3.5, 0.45 * len(classnames) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(classnames))
    ax.set_xticks(ticks, labels=classnames, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=classnames)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classnames) <= 20:
        for i in ticks:
            for j in ticks:
                colour = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color=colour)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_fewshot_report(
    result: SweepResult, out_dir: str | Path, *, dataset: str, experts: list[str] | None = None
) -> Path:
    """``results.json``, ``accuracy_vs_shots.png``, ``confusion_<method>.png`` and ``report.html`` in ``out_dir``.

    ``experts`` names the encoders (default: the sweep's own description, model and weights).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result.to_dict(), indent=2))
    setup = result.setup
    experts = experts or setup.get("experts") or ["?"]
    images = [plot_accuracy_vs_shots(result, out / "accuracy_vs_shots.png", f"{dataset} — {', '.join(experts)}")]
    for method, conf in result.confusions.items():
        images.append(
            plot_confusion(
                conf["confusion"],
                conf["classnames"],
                out / f"confusion_{method}.png",
                f"{method}, {conf['shots']}-shot, seed {conf['seed']}: {conf['accuracy']:.1%}",
            )
        )
    table = result.table()
    shots = sorted({r["shots"] for r in result.rows})
    head = "".join(f"<th>{s}-shot</th>" for s in shots)
    body = "".join(
        f"<tr><td>{html.escape(m)}</td>"
        + "".join(f"<td>{by[s][0]:.1%} ± {by[s][1]:.1%}</td>" if s in by else "<td></td>" for s in shots)
        + "</tr>"
        for m, by in table.items()
    )
    chosen = "".join(
        f"<tr><td>{html.escape(r['method'])}</td><td>{r['shots']}</td><td>{r['seed']}</td><td>{r['accuracy']:.1%}</td>"
        f"<td>{_pct(r.get('val_accuracy'))}</td><td>{html.escape(format_params(r.get('params', {})))}</td></tr>"
        for r in result.rows
        if r["method"] not in BASELINES or r.get("params")
    )
    figures = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}" '
        f'alt="{html.escape(p.stem)}"><figcaption>{html.escape(p.name)}</figcaption></figure>'
        for p in images
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Few-shot report: {html.escape(dataset)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
figure{{display:inline-block;margin:1em}}img{{max-width:520px}}</style></head><body>
<h1>Few-shot classification — {html.escape(dataset)}</h1>
<p>Experts: {html.escape(", ".join(experts))}.{html.escape(_setup_line(setup))} Hyper-parameters (the cache's α, β;
GDA's α; the linear head's C; auto's head) are chosen on a validation split disjoint from the test split;
the test split is only scored.
Baselines on the same features: <b>centroid</b> (nearest class mean of the plain support features) and
<b>logreg</b> (scikit-learn logistic regression on every support view, C chosen on the same validation split).</p>
<h2>Test accuracy (mean ± std over seeds)</h2><table><tr><th>method</th>{head}</tr>{body}</table>
<p><b>{html.escape(result.verdict())}</b></p>
{figures}
<h2>Every run, with the selected hyper-parameters</h2>
<table><tr><th>method</th><th>shots</th><th>seed</th><th>test acc</th><th>val acc</th><th>chosen</th></tr>
{chosen}</table>
</body></html>"""
    (out / "report.html").write_text(page)
    return out / "report.html"


def format_params(params: dict) -> str:
    """The hyper-parameters a run used, named for its method: ``α=0.4, β=5.5`` (cache), ``GDA α=10`` (gda)."""
    names = {"alpha": "α", "beta": "β", "gda_alpha": "GDA α", "best_epoch": "best epoch"}
    return ", ".join(f"{names.get(k, k)}={_num(v)}" for k, v in params.items())


def _setup_line(setup: dict) -> str:
    if not setup:
        return ""
    views = setup.get("augment_views", 1)
    keys = "plain features" if views == 1 else f"the mean of {views} views (the image and {views - 1} augmented)"
    augmented = f", plus {views - 1} augmented view(s) of its {setup.get('support_images', '?')} support images"
    remembered = setup.get("remembered_runs")
    return (
        f" Cache keys: {keys} per support image. {len(setup.get('seeds', []))} seed(s) per shot count."
        f" Each of the sweep's {setup.get('images', '?')} images was encoded once for all runs"
        f"{augmented if views > 1 else ''}."
        + (
            f" {remembered} run result(s) were read back from an earlier sweep on the same features and code"
            " (the sweep memo; fewshot eval --refit fits them again)."
            if remembered
            else ""
        )
    )


def _pct(value) -> str:
    return "" if value is None else f"{value:.1%}"


def _num(value) -> str:
    return "" if value is None else (value if isinstance(value, str) else f"{value:g}")
