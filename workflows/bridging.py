"""Stage-1 alignment from image–caption pairs: frozen expert → feature store → bridge → frozen LM.

    pairs = read_pairs("captions.jsonl")                  # {"image": "a.jpg", "text": "an ant on a leaf"}
    job = BridgeJob(expert=create_expert("timm", ...), lm="local", kind="mlp", store=DirectoryStore("store/"))
    result = job.train(pairs, epochs=20, checkpoint_dir="runs/ants")
    job.model.save("bridge/")
    job.caption(["ant.jpg"])                                # greedy captions from image features

Features are read through the feature store once per job: the vision expert runs only on
images it has never seen, and every epoch trains on the stored features. Images that cannot
be read are reported and left out; the rest train.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agents.chat import DEFAULT_LOCAL_MODEL, LocalChatModel
from bridges.bridged_lm import BridgedLM
from bridges.registry import create_bridge
from bridges.training import TrainResult, evaluate, train_bridge
from cache.store import FeatureStore
from experts import ConfigError, Expert
from experts.stored import check_stored_weights, expert_from_stored, stored_spec
from workflows.settings import Settings
from workflows.store_runner import run_through_store

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "<image>Caption:"


@dataclass(frozen=True)
class CaptionPair:
    image: str
    text: str


def read_pairs(path: str | Path) -> list[CaptionPair]:
    """Image–caption pairs from JSONL (``{"image", "text"}``) or CSV (``image,text`` header); paths are
    resolved against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pairs file {path} does not exist")
    if path.suffix == ".csv":
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pairs = []
    for i, row in enumerate(rows, 1):
        if not row.get("image") or not row.get("text"):
            raise ConfigError(f"{path}: row {i} needs 'image' and 'text', got {sorted(row)}")
        image = Path(row["image"])
        pairs.append(CaptionPair(str(image if image.is_absolute() else path.parent / image), str(row["text"])))
    return pairs


def load_local_lm(spec: str = DEFAULT_LOCAL_MODEL) -> tuple[Any, Any, str]:
    """(causal LM, tokenizer, name) through the same loader the planner's local chat model uses."""
    if not spec.startswith("local"):
        raise ConfigError(f"bridges need a local transformers LM (local:...), got {spec!r}")
    spec = spec if spec.partition(":")[2] else DEFAULT_LOCAL_MODEL  # a saved bridge names its LM in full
    chat = LocalChatModel(model=spec.partition(":")[2])
    return chat.hf_model, chat.tokenizer, spec


@dataclass
class BridgeJob:
    """A vision expert, a store, and a bridged LM; ``features`` is the only place the expert runs."""

    expert: Expert
    model: BridgedLM
    store: FeatureStore | None = None
    prompt: str = DEFAULT_PROMPT
    dropped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        expert: Expert,
        *,
        lm: str = DEFAULT_LOCAL_MODEL,
        kind: str = "mlp",
        store: FeatureStore | None = None,
        prompt: str = DEFAULT_PROMPT,
        **bridge_config: Any,
    ) -> BridgeJob:
        net, tokenizer, name = load_local_lm(lm)
        feature_dim = int(expert.config.get("dim") or 0) or _probe_dim(expert)
        bridge = create_bridge(kind, in_dim=feature_dim, lm_dim=net.config.hidden_size, **bridge_config)
        return cls(expert, BridgedLM(net, tokenizer, bridge, lm_name=name), store, prompt)

    def save(self, directory: str | Path) -> Path:
        """The bridge (safetensors + JSON) and ``job.json``: the expert that makes its features, and the prompt."""
        directory = self.model.save(directory)
        job = {"expert": stored_spec(self.expert), "identity": self.expert.identity, "prompt": self.prompt}
        (Path(directory) / "job.json").write_text(json.dumps(job, indent=2, default=str))
        return Path(directory)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        store: FeatureStore | None = None,
        settings: Settings | None = None,
        lm: str | None = None,
        **expert_overrides: Any,
    ) -> BridgeJob:
        """Rebuild a saved job: the expert from its spec (identity checked), the LM by its name, the bridge.

        The files may name only plain expert fields and local or cached weights (see :mod:`experts.stored`);
        device, offline mode and trust flags come from ``settings`` (default: ``Settings()``), then
        ``expert_overrides``. ``lm`` replaces the LM that ``bridge.json`` names.
        """
        directory = Path(directory)
        job_file = directory / "job.json"
        job = json.loads(job_file.read_text())
        if not job.get("expert"):
            raise ConfigError(f"{directory}: the expert was not made by create_expert; cannot rebuild it")
        settings = settings or Settings()
        expert = expert_from_stored(
            job["expert"], source=str(job_file), runtime=settings.expert_kwargs, overrides=expert_overrides
        )
        if expert.identity != job["identity"]:
            raise ConfigError(f"{directory}: expert identity {expert.identity} differs from the trained one")
        if lm is None:
            lm = json.loads((directory / "bridge.json").read_text()).get("lm") or DEFAULT_LOCAL_MODEL
            check_stored_weights(
                lm.partition(":")[2] or None,
                where=f"{directory / 'bridge.json'}: field 'lm'",
                runtime=settings.expert_defaults(),
                bare_names_are_hub_ids=True,
            )
        net, tokenizer, name = load_local_lm(lm)
        return cls(expert, BridgedLM.load(directory, net, tokenizer, lm_name=name), store, job["prompt"])

    def features(self, images: Sequence[str]) -> tuple[list[torch.Tensor | None], dict[str, str]]:
        """One feature vector per image (None where unreadable) and the errors, through the store."""
        results, run = run_through_store(self.expert, list(images), self.store)
        log.info("bridge features: %d from the store, %d computed, %d failed", run.hits, run.misses, run.failed)
        vectors = [torch.as_tensor(r.evidence.vector) if r.ok else None for r in results]
        return vectors, {r.source: r.error for r in results if not r.ok}

    def training_pairs(self, pairs: Sequence[CaptionPair]) -> list[tuple[torch.Tensor, str, str]]:
        vectors, errors = self.features([p.image for p in pairs])
        self.dropped.update(errors)
        if errors:
            log.warning("left out %d unreadable images: %s", len(errors), errors)
        return [(v, self.prompt, p.text) for v, p in zip(vectors, pairs) if v is not None]

    def train(self, pairs: Sequence[CaptionPair], *, val: Sequence[CaptionPair] = (), **options: Any) -> TrainResult:
        """Stage-1 training of the bridge only (expert and LM frozen); ``options`` go to ``train_bridge``."""
        train = self.training_pairs(pairs)
        if not train:
            raise ConfigError("no readable training images")
        return train_bridge(self.model, train, val_pairs=self.training_pairs(val) if val else None, **options)

    def eval_loss(self, pairs: Sequence[CaptionPair]) -> float:
        return evaluate(self.model, self.training_pairs(pairs))

    def caption(self, images: Sequence[str], *, max_new_tokens: int = 32) -> list[dict[str, Any]]:
        """Greedy captions from image features; an unreadable image gets its error instead."""
        vectors, errors = self.features(images)
        ok = [i for i, v in enumerate(vectors) if v is not None]
        texts = (
            self.model.generate(torch.stack([vectors[i] for i in ok]), [self.prompt] * len(ok), max_new_tokens)
            if ok
            else []
        )
        out: list[dict[str, Any]] = [{"image": str(img)} for img in images]
        for i, text in zip(ok, texts):
            out[i]["caption"] = text.strip()
        for i, v in enumerate(vectors):
            if v is None:
                out[i]["error"] = errors.get(str(images[i])) or next(iter(errors.values()), "unreadable")
        return out


def _probe_dim(expert: Expert) -> int:
    from PIL import Image

    return int(expert(Image.new("RGB", (32, 32))).dim)
