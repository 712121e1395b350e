"""Where the time of a reasoning run goes: model vs tools vs framework, cold and warm store.

    python bench/reasoning.py                  # scripted model + the real SmolLM2-135M (offline)
    python bench/reasoning.py --no-local       # scripted model only (isolates the framework)

For each question: seconds in model calls, in tool calls (expert + store + bridge text),
and the rest (LangGraph loop, middleware, tracing) = the framework. The scripted model
takes no time, so its runs measure the framework's own cost per step. Each question is
asked twice over one store: the second (warm) pass must make no expert forward pass.
The last line prints the headline figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.chat import DEFAULT_LOCAL_MODEL, ScriptedChatModel  # noqa: E402
from cache.store import DirectoryStore  # noqa: E402
from experts import create_expert  # noqa: E402
from workflows.reasoning import Reasoner  # noqa: E402

QUESTIONS = ["How many people are in the image?", "Is there a bus in the image?", "What objects are in the image?"]


def scripted() -> ScriptedChatModel:
    return ScriptedChatModel(
        steps=[{"tool": "detect_objects", "args": {}}, {"content": "Reasoning: from the detector.\nAnswer: x"}]
    )


def run(reasoner_for, image: Path, label: str) -> list[dict]:
    rows = []
    for warmth in ("cold", "warm"):
        for q in QUESTIONS:
            reasoner = reasoner_for()
            t0 = time.perf_counter()
            result = reasoner.ask(image, q)
            total = time.perf_counter() - t0
            split = result.trace.time_split()
            tools = result.trace.tool_steps
            rows.append(
                {
                    "model": label,
                    "store": warmth,
                    "question": q,
                    "total": total,
                    "model_s": split["model"],
                    "tools_s": split["tools"],
                    "framework_s": max(0.0, total - split["model"] - split["tools"]),
                    "model_calls": len(result.trace.model_steps),
                    "tool_calls": len(tools),
                    "misses": sum(s.store_misses or 0 for s in tools),
                    "hits": sum(s.store_hits or 0 for s in tools),
                    "answer": (result.answer or "")[:40],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_weights = Path(__file__).resolve().parents[2] / "shared/weights/yolov8n_int8.tflite"
    parser.add_argument("--weights", default=str(default_weights))
    parser.add_argument("--local", action=argparse.BooleanOptionalAction, default=True, help="also run SmolLM2-135M")
    args = parser.parse_args()

    import ultralytics

    image = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    yolo = create_expert("yolo", weights=args.weights, device="cpu", offline=True).load()
    yolo(image)  # warm the interpreter so the first cold run measures the store, not TFLite's start-up

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = DirectoryStore(Path(tmp) / "scripted")
        rows += run(lambda: Reasoner(model=scripted(), experts={"yolo": yolo}, store=store), image, "scripted")
        if args.local:
            store = DirectoryStore(Path(tmp) / "local")
            local = Reasoner(model=DEFAULT_LOCAL_MODEL, experts={"yolo": yolo}, store=store)
            t0 = time.perf_counter()
            local.model.load()
            print(f"SmolLM2-135M load: {time.perf_counter() - t0:.1f}s")
            rows += run(lambda: local, image, "smollm2-135m")

    header = f"{'model':>13} {'store':>5} {'total s':>8} {'model s':>8} {'tools s':>8} {'frame s':>8} {'calls m/t':>9}"
    print(header + f" {'hits/miss':>9}  question → answer")
    for r in rows:
        print(
            f"{r['model']:>13} {r['store']:>5} {r['total']:8.3f} {r['model_s']:8.3f} {r['tools_s']:8.3f} "
            f"{r['framework_s']:8.3f} {r['model_calls']:>4}/{r['tool_calls']:<4} {r['hits']:>4}/{r['misses']:<4}  "
            f"{r['question']} → {r['answer']!r}"
        )

    warm_misses = sum(r["misses"] for r in rows if r["store"] == "warm")
    assert warm_misses == 0, f"warm store still ran the expert {warm_misses} times"

    def med(model: str, store: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["model"] == model and r["store"] == store)

    # Only the first cold question misses (the others ask about the same image, already stored).
    tools_cold = statistics.median(r["tools_s"] for r in rows if r["model"] == "scripted" and r["misses"])
    tools_warm = med("scripted", "warm", "tools_s")
    frame = med("scripted", "warm", "framework_s")
    steps = med("scripted", "warm", "model_calls") + med("scripted", "warm", "tool_calls")
    headline = (
        f"headline: framework {frame * 1000:.1f} ms/question ({frame / steps * 1000:.1f} ms/step, scripted model) | "
        f"detector tool cold {tools_cold * 1000:.0f} ms vs warm store {tools_warm * 1000:.1f} ms "
        f"({tools_cold / tools_warm:.0f}x), warm misses {warm_misses}"
    )
    if args.local:
        total, model = med("smollm2-135m", "warm", "total"), med("smollm2-135m", "warm", "model_s")
        fw = med("smollm2-135m", "warm", "framework_s")
        headline += f" | SmolLM2 question {total:.1f}s: model {model / total:.0%}, framework {fw / total:.1%}"
    print(headline)


if __name__ == "__main__":
    main()
