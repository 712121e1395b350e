"""Train a :class:`~bridges.bridged_lm.BridgedLM`'s bridge on (features, prompt, target) pairs.

Features are precomputed (the workflows layer reads them from the feature store), so an
epoch only runs the bridge and the frozen LM. AdamW updates the bridge alone (and the LM's
LoRA adapters, when the model has them: one optimizer for both), on a cosine schedule with
linear warmup, with gradient clipping; on CUDA the forward pass runs under bf16 (fp16 + loss
scaling where bf16 is missing) autocast.

Checkpoints are written after every epoch to ``checkpoint_dir/last``: the bridge
(``bridge.safetensors`` + ``bridge.json``, and ``lora.safetensors``), the optimizer's tensors
(``optimizer.safetensors``) and everything else as JSON (``trainer.json``: epoch, history,
optimizer hyper-parameters, scheduler state, RNG state). No pickles. Shuffling is seeded per
epoch (``seed + epoch``), so ``resume=True`` continues exactly where the run stopped and ends
with the same weights as an uninterrupted run.

::

    pairs = [(features_i, "<image> Caption:", "an ant on a leaf"), ...]
    result = train_bridge(model, pairs, epochs=20, checkpoint_dir="runs/ants", resume=True)
    result.history[-1]  # {'epoch': 20, 'train_loss': 0.01, 'val_loss': None, 'lr': 0.0, ...}
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from experts.errors import ConfigError

from .bridged_lm import BridgedLM

__all__ = ["TrainResult", "evaluate", "peak_rss_mb", "profile_step", "train_bridge"]

Pair = tuple[torch.Tensor, str, str]
TRAINER_FILE, OPTIMIZER_FILE = "trainer.json", "optimizer.safetensors"
CHECKPOINT_VERSION = 1
#: run settings newer than some checkpoints, and the value those checkpoints were written with
RUN_ADDED_LATER = {"answer_token_weight": 0.0, "lm_weight": 1.0}


@dataclass
class TrainResult:
    """History (one dict per epoch) and where the run ended.

    ``resumed_from`` is the epoch a resumed run started after (``None`` for a fresh run).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_completed: int = 0
    resumed_from: int | None = None
    checkpoint: Path | None = None

    @property
    def final_train_loss(self) -> float | None:
        return self.history[-1]["train_loss"] if self.history else None

    @property
    def final_val_loss(self) -> float | None:
        return self.history[-1]["val_loss"] if self.history else None


def _batches(pairs: Sequence[Pair], order: list[int], batch_size: int):
    # A list, not a stack: images with different patch counts are padded (with a mask) by the model.
    for start in range(0, len(order), batch_size):
        chunk = [pairs[i] for i in order[start : start + batch_size]]
        yield [torch.as_tensor(p[0]) for p in chunk], [p[1] for p in chunk], [p[2] for p in chunk]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def profile_step(
    model: BridgedLM,
    pairs: Sequence[Pair],
    *,
    repeats: int = 3,
    answer_token_weight: float = 0.0,
    lm_weight: float = 1.0,
) -> dict[str, float]:
    """Where a training step's time goes: the whole step vs the bridge alone, on the first batch of ``pairs``.

    ``step_s``: forward + backward of the training loss (the same weights as the run: with ``lm_weight=0``
    the LM's head only, the decoder never runs); ``bridge_s``: the bridge's own forward + backward (a
    stand-in loss on its output); ``lm_share`` = 1 - bridge_s / step_s. Medians of ``repeats``; gradients
    are discarded (no optimizer step).

    >>> # profile_step(model, pairs[:32])  ->  {"step_s": 1.9, "bridge_s": 0.02, "lm_share": 0.99}
    """
    import statistics

    feats, prompts, targets = next(_batches(pairs, list(range(len(pairs))), len(pairs)))
    was_training = model.bridge.training
    model.bridge.train()
    step, bridge = [], []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.loss(feats, prompts, targets, answer_token_weight=answer_token_weight, lm_weight=lm_weight).backward()
            step.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model.soft_tokens(feats, model.question_inputs(prompts)).float().square().mean().backward()
            bridge.append(time.perf_counter() - t0)
    finally:
        for p in model.parameters():
            p.grad = None
        model.bridge.train(was_training)
    step_s, bridge_s = statistics.median(step), statistics.median(bridge)
    return {"step_s": step_s, "bridge_s": bridge_s, "lm_share": max(0.0, 1.0 - bridge_s / step_s)}


def _autocast(device: torch.device) -> tuple[contextlib.AbstractContextManager, bool]:
    """Mixed precision on CUDA only (CPU autocast is slow and changes results); returns (ctx, needs_scaler)."""
    if device.type != "cuda":
        return contextlib.nullcontext(), False
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype == torch.float16


@torch.no_grad()
def evaluate(model: BridgedLM, pairs: Sequence[Pair], batch_size: int = 8) -> float:
    """Mean loss over ``pairs`` (each batch weighted by its size), bridge in eval mode."""
    if not pairs:
        raise ConfigError("evaluate: no pairs")
    was_training = model.bridge.training
    model.bridge.eval()
    total = 0.0
    try:
        ctx, _ = _autocast(model.device)
        for feats, prompts, targets in _batches(pairs, list(range(len(pairs))), batch_size):
            with ctx:
                total += float(model.loss(feats, prompts, targets)) * len(prompts)
    finally:
        model.bridge.train(was_training)
    return total / len(pairs)


# ---------------------------------------------------------------------- checkpoint I/O
def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer ``state_dict`` → (tensors for safetensors, JSON-safe rest)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, slots in state["state"].items():
        plain[str(idx)] = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain[str(idx)][key] = value
    return tensors, {"state": plain, "param_groups": state["param_groups"]}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(idx): dict(slots) for idx, slots in rest["state"].items()}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _save_checkpoint(
    directory: Path,
    model: BridgedLM,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    epoch: int,
    history: list[dict[str, Any]],
    run: dict[str, Any],
) -> Path:
    """Write ``directory/last`` atomically enough: build ``last.tmp``, then swap it in."""
    from safetensors.torch import save_file

    final, tmp, old = directory / "last", directory / "last.tmp", directory / "last.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    opt_tensors, opt_rest = _split_optimizer_state(optimizer.state_dict())
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"torch_cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file({**opt_tensors, **{f"rng.{k}": v for k, v in rng.items()}}, str(tmp / OPTIMIZER_FILE))
    trainer = {
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "history": history,
        "run": run,
        "optimizer": opt_rest,
        "scheduler": scheduler.state_dict(),
    }
    (tmp / TRAINER_FILE).write_text(json.dumps(trainer, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(
    directory: Path, model: BridgedLM, optimizer: torch.optim.Optimizer, scheduler: Any, run: dict[str, Any]
) -> tuple[int, list[dict[str, Any]]] | None:
    """Restore from ``directory/last`` (or a half-swapped ``last.old``); ``None`` if there is none."""
    from safetensors.torch import load_file

    path = next((p for p in (directory / "last", directory / "last.old") if (p / TRAINER_FILE).is_file()), None)
    if path is None:
        return None
    trainer = json.loads((path / TRAINER_FILE).read_text(encoding="utf-8"))
    if trainer.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path}: checkpoint version {trainer.get('version')!r} is not {CHECKPOINT_VERSION}")
    saved = {**RUN_ADDED_LATER, **trainer["run"]}
    changed = {k: (saved.get(k), v) for k, v in run.items() if saved.get(k) != v}
    if changed:
        raise ConfigError(
            f"resume: {path} was written by a run with different settings {changed} (saved, now); "
            "use a new checkpoint_dir or the same settings"
        )
    try:  # the bridge and any LoRA adapters, in place: same bridge config and LoRA settings or an error
        model.load_weights(path)
    except ConfigError as err:
        raise ConfigError(f"resume: {err}") from err
    tensors = load_file(str(path / OPTIMIZER_FILE))
    opt_tensors = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
    optimizer.load_state_dict(_join_optimizer_state(opt_tensors, trainer["optimizer"]))
    scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda_states = [
        tensors[f"rng.torch_cuda{i}"] for i in range(torch.cuda.device_count()) if f"rng.torch_cuda{i}" in tensors
    ]
    if cuda_states and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return int(trainer["epoch"]), list(trainer["history"])


# ---------------------------------------------------------------------- the loop
def train_bridge(
    model: BridgedLM,
    train_pairs: Sequence[Pair],
    *,
    val_pairs: Sequence[Pair] | None = None,
    epochs: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    warmup_steps: int = 0,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | Callable[[int, int], Any] = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    answer_token_weight: float = 0.0,
    lm_weight: float = 1.0,
) -> TrainResult:
    """Train ``model.bridge`` for ``epochs`` epochs; see the module docstring.

    ``answer_token_weight`` > 0 adds :meth:`BridgedLM.answer_token_loss` to the LM's loss with that weight;
    ``lm_weight=0`` trains on that loss alone, without running the LM (:meth:`BridgedLM.loss`).

    ``on_epoch(record)`` is called after each epoch's checkpoint is written (an exception
    there stops training with the checkpoint safely on disk). ``resume=True`` without a
    checkpoint starts fresh.
    """
    from transformers import get_cosine_schedule_with_warmup

    train_pairs = list(train_pairs)
    if not train_pairs:
        raise ConfigError("train_bridge: train_pairs is empty")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"train_bridge: epochs ({epochs}) and batch_size ({batch_size}) must be >= 1")
    if resume and checkpoint_dir is None:
        raise ConfigError("train_bridge: resume=True needs checkpoint_dir")

    params = model.parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_pairs) / batch_size)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps_per_epoch * epochs)
    ctx, needs_scaler = _autocast(model.device)
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    # Settings that must match for a resumed run to equal an uninterrupted one.
    run = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "num_train": len(train_pairs),
        "answer_token_weight": answer_token_weight,
        "lm_weight": lm_weight,
    }

    result = TrainResult()
    start_epoch = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            restored = _load_checkpoint(ckpt_dir, model, optimizer, scheduler, run)
            if restored is not None:
                start_epoch, result.history = restored
                result.resumed_from = start_epoch
                result.epochs_completed = start_epoch

    bar = None
    total, initial = steps_per_epoch * epochs, steps_per_epoch * start_epoch
    if callable(progress):  # a factory (total, initial) -> bar with update(n), set_postfix(**values), close()
        bar = progress(total, initial)
    elif progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=initial, desc="bridge")
    try:
        for epoch in range(start_epoch, epochs):
            began = time.perf_counter()
            model.bridge.train()
            order = torch.randperm(len(train_pairs), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            losses = []
            for feats, prompts, targets in _batches(train_pairs, order, batch_size):
                with ctx:
                    loss = model.loss(
                        feats, prompts, targets, answer_token_weight=answer_token_weight, lm_weight=lm_weight
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
            record = {
                "epoch": epoch + 1,
                "train_loss": sum(losses) / len(losses),
                "val_loss": evaluate(model, val_pairs, batch_size) if val_pairs else None,
                "lr": float(scheduler.get_last_lr()[0]),
                "steps": len(losses),
                "seconds": round(time.perf_counter() - began, 3),
            }
            record["step_losses"] = [round(x, 5) for x in losses]  # the loss curve of the report
            record["steps_per_s"] = round(len(losses) / max(record["seconds"], 1e-9), 4)
            record["peak_rss_mb"] = round(peak_rss_mb(), 1)
            result.history.append(record)
            result.epochs_completed = epoch + 1
            if ckpt_dir is not None:
                result.checkpoint = _save_checkpoint(
                    ckpt_dir, model, optimizer, scheduler, epoch=epoch + 1, history=result.history, run=run
                )
            if on_epoch is not None:
                on_epoch(record)
    finally:
        if bar is not None:
            bar.close()
    model.bridge.eval()
    return result
