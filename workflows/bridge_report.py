"""The VQA report of a trained bridge: accuracy per question kind, examples, answer confusion, loss curve.

    evaluation = job.evaluate_vqa(read_vqa("easy-vqa:test:1000"))
    write_vqa_report("report/", evaluation, history=json.loads(Path("bridge/history.json").read_text()))
    # -> report/report.html, report/loss.png, report/eval.json

The HTML is one self-contained page (images inlined as data URIs); every user-supplied
string is escaped.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from workflows.thumbnails import thumbnail_uri  # noqa: E402
from workflows.vqa import VQAScore, normalize_answer  # noqa: E402

__all__ = ["confusion_table", "plot_loss", "write_vqa_report"]

LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}
EXAMPLES = 12


@plt.rc_context(LITERAL_TEXT)
def plot_loss(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train (and validation, when recorded) loss per epoch, log scale; per-step losses when recorded."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=120)
    steps = [x for r in history for x in r.get("step_losses", [])]
    if steps:
        ax.plot(range(1, len(steps) + 1), steps, linewidth=0.6, alpha=0.6, label="train (step)")
        per_epoch = [r["steps"] for r in history]
        ends = [sum(per_epoch[: i + 1]) for i in range(len(per_epoch))]
        ax.set_xlabel("step")
    else:
        ends = [r["epoch"] for r in history]
        ax.set_xlabel("epoch")
    ax.plot(ends, [r["train_loss"] for r in history], marker="o", label="train (epoch mean)")
    if any(r.get("val_loss") is not None for r in history):
        ax.plot(ends, [r.get("val_loss") for r in history], marker="s", label="validation")
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.set_title(title or "Bridge training loss", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_table(score: VQAScore, *, max_answers: int = 16) -> tuple[list[str], list[list[int]]]:
    """Answers (gold answers first, then other predictions) and counts[gold][predicted]."""
    gold = sorted({g for g, _ in score.confusion})
    other = [a for a, _ in Counter({p: n for (_, p), n in score.confusion.items() if p not in gold}).most_common()]
    labels = (gold + other)[:max_answers]
    counts = [[score.confusion.get((g, p), 0) for p in labels] for g in gold]
    return labels, counts


def write_vqa_report(
    directory: str | Path,
    evaluation: Any,
    *,
    history: Sequence[dict[str, Any]] = (),
    title: str = "Bridge VQA evaluation",
    setup: dict[str, Any] | None = None,
) -> Path:
    """``report.html`` (+ ``loss.png`` when there is a history, + ``eval.json``) in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    score: VQAScore = evaluation.score
    esc = html.escape
    summary = {
        **score.to_dict(),
        "seconds": evaluation.seconds,
        "seconds_per_answer": evaluation.seconds_per_answer,
        "setup": setup or {},
    }
    (directory / "eval.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "td.l,th.l{text-align:left}.ok{color:#070}.bad{color:#b00}</style>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Exact match (normalized answers): <b>{score.accuracy:.1%}</b> of {score.total} questions "
        f"({score.correct} correct); {evaluation.seconds_per_answer * 1000:.1f} ms per answer.</p>",
    ]
    if setup:
        parts.append("<p>" + "; ".join(f"{esc(str(k))}: {esc(str(v))}" for k, v in setup.items()) + "</p>")
    parts.append(
        "<h2>Per question kind</h2><table><tr><th class=l>kind</th><th>correct</th><th>total</th><th>accuracy</th></tr>"
    )
    for kind, (c, t) in sorted(score.per_kind.items()):
        parts.append(f"<tr><td class=l>{esc(kind)}</td><td>{c}</td><td>{t}</td><td>{c / t:.1%}</td></tr>")
    parts.append("</table>")

    if history:
        plot_loss(history, directory / "loss.png", title)
        parts.append("<h2>Training loss</h2><img src='loss.png' alt='loss curve'>")

    labels, counts = confusion_table(score)
    parts.append("<h2>Answers: gold (rows) × predicted (columns)</h2><table><tr><th class=l>gold \\ predicted</th>")
    parts += [f"<th>{esc(a) or '(empty)'}</th>" for a in labels]
    parts.append("</tr>")
    gold = sorted({g for g, _ in score.confusion})
    for g, row in zip(gold, counts):
        cells = "".join(
            f"<td style='background:{'#dfd' if lab == g and n else ('#fdd' if n else '#fff')}'>{n or ''}</td>"
            for lab, n in zip(labels, row)
        )
        parts.append(f"<tr><th class=l>{esc(g)}</th>{cells}</tr>")
    parts.append("</table>")

    right = [
        i
        for i, p in enumerate(evaluation.predictions)
        if normalize_answer(p) == normalize_answer(evaluation.pairs[i].answer)
    ]
    wrong = [i for i in range(len(evaluation.pairs)) if i not in set(right)]
    shown = wrong[: EXAMPLES // 2] + right[: EXAMPLES - min(len(wrong), EXAMPLES // 2)]
    parts.append(
        "<h2>Examples</h2><table><tr><th>image</th><th class=l>question</th>"
        "<th class=l>gold</th><th class=l>answer</th></tr>"
    )
    for i in shown:
        pair, pred = evaluation.pairs[i], evaluation.predictions[i]
        cls = "ok" if i in right else "bad"
        uri = thumbnail_uri(pair.image)
        img = f"<img src='{uri}' width=64 height=64>" if uri else ""
        parts.append(
            f"<tr><td>{img}</td><td class=l>{esc(pair.question)}</td><td class=l>{esc(pair.answer)}</td>"
            f"<td class='l {cls}'>{esc(pred) or '(empty)'}</td></tr>"
        )
    parts.append("</table>")
    out = directory / "report.html"
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return out
