"""A frozen causal LM that reads images through a learnable bridge (LLaVA-style).

``BridgedLM`` pairs any ``transformers`` causal LM and its tokenizer with a bridge from
:mod:`bridges.registry`. Only the bridge learns: the LM is frozen (``requires_grad=False``)
and kept in eval mode, and incoming features are detached so no gradient ever reaches the
vision expert that produced them. With ``lora=LoraSettings(rank=8)`` the LM also gets LoRA
adapters on its attention (:mod:`bridges.lora`), and they learn with the bridge; its base
weights stay frozen.

Each prompt holds exactly one image placeholder (``"<image>"`` by default). The prompt is
split there as *text*, before tokenization, so the placeholder never has to be a token of
the vocabulary; the bridge's ``k`` soft tokens take its place. A prompt without the
placeholder gets the soft tokens prepended. For training the target follows the prompt,
then EOS; only those positions carry labels.

::

    model = BridgedLM(lm, tokenizer, create_bridge("mlp", in_dim=1280, lm_dim=576, num_tokens=4))
    loss = model.loss(features, ["<image> Caption:"] * 2, ["an ant", "a bee"])
    model.generate(features, ["<image> Caption:"] * 2)  # -> ["an ant", "a bee"] once trained
    model.save("runs/bridge"); BridgedLM.load("runs/bridge", lm, tokenizer)
    BridgedLM(lm, tokenizer, bridge, lora=LoraSettings(rank=8))  # + adapters, saved as lora.safetensors

Sequence layout (``[BOS]`` only when the tokenizer adds one by default)::

    [BOS] text-before  <k soft tokens>  text-after  target  EOS   (right-padded: training)
    PAD…  [BOS] text-before  <k soft tokens>  text-after          (left-padded: generation)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experts.errors import ConfigError

from . import saved
from .lm_loss import IGNORE_INDEX, lm_loss
from .lora import LoraSettings, apply_lora, lora_parameters, lora_settings_of
from .padding import pad_features
from .saved import CONFIG_FILE, FORMAT_VERSION, LORA_FILE, WEIGHTS_FILE, read_config

# The on-disk names live in bridges.saved; re-exported here, where they were first imported from.
__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "LORA_FILE",
    "WEIGHTS_FILE",
    "BridgeInputs",
    "BridgedLM",
    "pad_features",
    "read_config",
]


@dataclass
class BridgeInputs:
    """What :meth:`BridgedLM.build_inputs` returns; ``labels`` is ``None`` without targets.

    ``image_positions[i]`` is the index of the first of the row's ``num_soft_tokens`` soft tokens.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    image_positions: list[int]
    num_soft_tokens: int = 0


class BridgedLM:
    """A frozen causal LM + tokenizer + a trainable bridge (see the module docstring).

    ``lm_name`` is recorded in ``bridge.json`` so a saved bridge says which LM it was trained
    for; it defaults to ``lm.config._name_or_path``. ``lora``: inject LoRA adapters into ``lm``
    (in place; an LM that already has the same adapters keeps them and their weights).
    """

    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        bridge: nn.Module,
        image_token: str = "<image>",
        *,
        lm_name: str | None = None,
        lora: LoraSettings | None = None,
    ):
        if not image_token:
            raise ConfigError("BridgedLM: image_token must be a non-empty string")
        existing = lora_settings_of(lm)
        if existing is not None and lora != existing:
            # Freezing it here would silently stop another BridgedLM's adapters from learning.
            raise ConfigError(
                f"BridgedLM: this LM already carries LoRA adapters {existing}"
                + (f", not {lora}" if lora is not None else "; pass lora= with the same settings")
                + " (or load a fresh LM)"
            )
        self.lm, self.tokenizer, self.image_token = lm, tokenizer, image_token
        self.lm_name = lm_name if lm_name is not None else str(getattr(lm.config, "_name_or_path", "") or "")
        lm.requires_grad_(False)
        lm.eval()
        self.lora = lora
        if lora is not None:
            apply_lora(lm, lora)  # after the freeze: only the adapters learn
        embed = lm.get_input_embeddings()
        lm_dim = int(embed.weight.shape[-1])
        if int(getattr(bridge, "lm_dim", lm_dim)) != lm_dim:
            raise ConfigError(f"BridgedLM: bridge lm_dim={bridge.lm_dim} but the LM's embeddings are {lm_dim}-d")
        self.bridge = bridge.to(embed.weight.device)
        if tokenizer.eos_token_id is None:
            raise ConfigError("BridgedLM: the tokenizer has no eos_token; targets must end with one")
        # Causal LMs often ship without a pad token; EOS is the usual stand-in (masked out anyway).
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._prefix = self._special_prefix()

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def embed_dtype(self) -> torch.dtype:
        return self.lm.get_input_embeddings().weight.dtype

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: the bridge's, then the LoRA adapters' (if any); never the LM's own."""
        return [p for p in self.bridge.parameters() if p.requires_grad] + self.lora_parameters()

    def lora_parameters(self) -> list[nn.Parameter]:
        """The LM's LoRA adapter parameters (empty without ``lora``)."""
        return [p for _, p in lora_parameters(self.lm)] if self.lora is not None else []

    # ------------------------------------------------------------------ inputs
    def _special_prefix(self) -> list[int]:
        """Ids the tokenizer puts before text by default (e.g. Llama's BOS; nothing for SmolLM2)."""
        plain = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("x")["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return list(full[:start])
        return []

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def split_prompt(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the placeholder (prefix specials included in "before").

        >>> # "Look: <image> what is it?" -> (ids of "Look: "), (ids of " what is it?")
        """
        count = prompt.count(self.image_token)
        if count > 1:
            raise ConfigError(f"prompt has {count} {self.image_token!r} placeholders, expected one: {prompt!r}")
        before, after = prompt.split(self.image_token) if count else ("", prompt)
        return self._prefix + self._ids(before), self._ids(after)

    def soft_tokens(
        self,
        features: torch.Tensor | Sequence[torch.Tensor],
        question: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Bridge output ``(B, k, lm_dim)`` in the LM's embedding dtype, on its device.

        ``features`` is a ``(B, D)`` / ``(B, P, D)`` tensor, or one tensor per image; images
        with different patch counts are zero-padded to the longest and the bridge gets the
        ``key_padding_mask`` (``True`` on padding) — only a bridge that takes one (the query
        bridge) can read such a batch. ``question``: ``(embeddings (B, T, lm_dim), mask (B, T))`` of
        the prompt text, for a question-aware bridge (:meth:`build_inputs` supplies it).
        """
        features, mask = pad_features(features)
        # Detached: gradients stop at the bridge, a vision expert upstream stays untouched.
        features = features.detach().to(self.device)
        inputs: dict[str, torch.Tensor] = {}
        if self.question_aware:
            if question is None:
                raise ConfigError("this bridge is question-aware: it needs the prompt text (use build_inputs)")
            inputs["question"], inputs["question_mask"] = question
        if mask is not None:
            if not self._bridge_takes_mask:
                raise ConfigError(
                    f"{type(self.bridge).__name__} cannot read images with different patch counts in one batch "
                    "(no key-padding mask); use a query bridge or equal patch counts"
                )
            inputs["key_padding_mask"] = mask.to(self.device)
        return self.bridge(features, **inputs).to(self.embed_dtype)

    @property
    def question_aware(self) -> bool:
        """Does the bridge read the question too (``question_aware=True`` on a projector or query bridge)?"""
        return bool(getattr(self.bridge, "question_aware", False))

    def question_inputs(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What a question-aware bridge reads besides the image (None for other bridges): the LM's frozen
        embeddings of each prompt's text (the question; a target is never part of a prompt), right-padded,
        with a True-on-token mask."""
        if not self.question_aware:
            return None
        n_prefix = len(self._prefix)
        token_ids = [before[n_prefix:] + after for before, after in map(self.split_prompt, prompts)]
        embed = self.lm.get_input_embeddings()
        length = max(1, max(len(ids) for ids in token_ids))
        padded = torch.full((len(token_ids), length), self.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(token_ids), length), dtype=torch.bool, device=self.device)
        for i, ids in enumerate(token_ids):
            padded[i, : len(ids)] = torch.tensor(ids, dtype=torch.long, device=self.device)
            mask[i, : len(ids)] = True
        with torch.no_grad():
            return embed(padded).detach(), mask

    @property
    def _bridge_takes_mask(self) -> bool:
        return "key_padding_mask" in inspect.signature(self.bridge.forward).parameters

    def build_inputs(
        self,
        features: torch.Tensor | Sequence[torch.Tensor],
        prompts: Sequence[str],
        targets: Sequence[str] | None = None,
    ) -> BridgeInputs:
        """Embeddings, attention mask and labels for a batch (right-padded with targets, else left-padded)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if targets is not None:
            targets = [targets] if isinstance(targets, str) else list(targets)
            if len(targets) != len(prompts):
                raise ConfigError(f"got {len(prompts)} prompts but {len(targets)} targets")
        parts = [self.split_prompt(prompt) for prompt in prompts]
        soft = self.soft_tokens(features, self.question_inputs(prompts))
        if soft.shape[0] != len(prompts):
            raise ConfigError(f"got features for {soft.shape[0]} images but {len(prompts)} prompts")
        embed = self.lm.get_input_embeddings()
        k = soft.shape[1]

        rows: list[torch.Tensor] = []
        row_labels: list[list[int]] = []
        positions: list[int] = []
        for i, (before, after) in enumerate(parts):
            target = self._ids(targets[i]) + [self.tokenizer.eos_token_id] if targets is not None else []
            ids_before = torch.tensor(before, dtype=torch.long, device=self.device)
            ids_after = torch.tensor(after + target, dtype=torch.long, device=self.device)
            rows.append(torch.cat([embed(ids_before), soft[i], embed(ids_after)], dim=0))
            positions.append(len(before))
            row_labels.append([IGNORE_INDEX] * (len(before) + k + len(after)) + target)

        length = max(row.shape[0] for row in rows)
        pad_vec = embed(torch.tensor([self.pad_token_id], device=self.device))[0]
        left = targets is None  # generation continues from the last position, so pad on the left
        batch_embeds, masks, labels = [], [], []
        for i, (row, lab) in enumerate(zip(rows, row_labels)):
            n_pad = length - row.shape[0]
            pad = pad_vec.expand(n_pad, -1)
            batch_embeds.append(torch.cat([pad, row] if left else [row, pad], dim=0))
            ones, zeros = [1] * row.shape[0], [0] * n_pad
            masks.append(zeros + ones if left else ones + zeros)
            labels.append(lab + [IGNORE_INDEX] * n_pad)
            if left:
                positions[i] += n_pad
        return BridgeInputs(
            inputs_embeds=torch.stack(batch_embeds),
            attention_mask=torch.tensor(masks, dtype=torch.long, device=self.device),
            labels=torch.tensor(labels, dtype=torch.long, device=self.device) if targets is not None else None,
            image_positions=positions,
            num_soft_tokens=k,
        )

    # ------------------------------------------------------------------ use
    def loss(
        self,
        features: torch.Tensor | Sequence[torch.Tensor],
        prompts: Sequence[str],
        targets: Sequence[str],
        *,
        answer_token_weight: float = 0.0,
        lm_weight: float = 1.0,
    ) -> torch.Tensor:
        """Mean cross-entropy over the target tokens (and EOS) of the batch.

        ``answer_token_weight`` > 0 adds that much of :meth:`answer_token_loss`: supervision at the bridge
        itself, a path to the answer that does not run back through the whole frozen LM. ``lm_weight=0``
        drops the LM's loss and never runs the LM (BLIP-2's first stage: the bridge learns alone, ~100×
        cheaper a step); a second stage with the LM's loss then teaches the LM to read it.
        """
        if not (answer_token_weight or lm_weight):
            raise ConfigError("loss: answer_token_weight and lm_weight are both 0: nothing to train")
        inputs = self.build_inputs(features, prompts, targets)
        loss = (
            lm_weight * lm_loss(self.lm, inputs.inputs_embeds, inputs.attention_mask, inputs.labels)
            if lm_weight
            else 0.0
        )
        if answer_token_weight:
            loss = loss + answer_token_weight * self.answer_token_loss(inputs, targets)
        return loss  # type: ignore[return-value]

    def answer_token_loss(self, inputs: BridgeInputs, targets: Sequence[str]) -> torch.Tensor:
        """Cross-entropy of each row's *last* soft token, read through the LM's output head, against the first
        token of its target: the bridge is asked to put the answer's first word into its output (BLIP-2
        trains its Q-Former with losses of its own before the LM reads it; this one needs no new weights).
        With a question-aware bridge that is where an answer computed from image *and* question goes."""
        head = self.lm.get_output_embeddings() if hasattr(self.lm, "get_output_embeddings") else None
        if head is None or not inputs.num_soft_tokens:
            raise ConfigError("the answer-token loss needs an LM with an output head and a bridge with soft tokens")
        soft = self._last_soft_tokens(inputs)
        first = [(self._ids(t) or [self.tokenizer.eos_token_id])[0] for t in targets]
        return torch.nn.functional.cross_entropy(head(soft).float(), torch.tensor(first, device=soft.device))

    def _inference_inputs(
        self, features: torch.Tensor | Sequence[torch.Tensor], prompts: Sequence[str]
    ) -> BridgeInputs:
        """:meth:`build_inputs` with the bridge in eval mode (no dropout), its mode restored after."""
        was_training = self.bridge.training
        self.bridge.eval()
        try:
            return self.build_inputs(features, prompts)
        finally:
            self.bridge.train(was_training)

    @staticmethod
    def _last_soft_tokens(inputs: BridgeInputs) -> torch.Tensor:
        """``(B, D)``: each row's last soft token, where an answer computed from image and question is read."""
        last = inputs.num_soft_tokens - 1
        return torch.stack([inputs.inputs_embeds[i, p + last] for i, p in enumerate(inputs.image_positions)])

    @torch.no_grad()
    def read_out(self, features: torch.Tensor | Sequence[torch.Tensor], prompts: Sequence[str]) -> list[int]:
        """The token each row's last soft token reads as through the LM's output head (its argmax): what
        :meth:`answer_token_loss` trains, measured without running the LM. A bridge trained on that loss
        alone (stage 1) can be judged by it before the LM has ever read a soft token."""
        head = self.lm.get_output_embeddings() if hasattr(self.lm, "get_output_embeddings") else None
        inputs = self._inference_inputs(features, prompts)
        if head is None or not inputs.num_soft_tokens:
            raise ConfigError("a read-out needs an LM with an output head and a bridge with soft tokens")
        return head(self._last_soft_tokens(inputs)).argmax(-1).tolist()

    @torch.no_grad()
    def generate(
        self,
        features: torch.Tensor | Sequence[torch.Tensor],
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        *,
        stop: Sequence[str] = (),
        **gen_kwargs: Any,
    ) -> list[str]:
        """Decode a continuation per image (greedy unless ``gen_kwargs`` say otherwise).

        ``stop``: strings that end an answer (e.g. ``["\n"]`` for one-line answers); the text is cut
        at the first one, and a stop string that is a single token also ends decoding there.
        """
        inputs = self._inference_inputs(features, prompts)
        gen_kwargs.setdefault("do_sample", False)
        gen_kwargs.setdefault("pad_token_id", self.pad_token_id)
        stop_ids = [ids[0] for ids in (self._ids(text) for text in stop) if len(ids) == 1]
        gen_kwargs.setdefault(
            "eos_token_id", [self.tokenizer.eos_token_id, *stop_ids] if stop_ids else self.tokenizer.eos_token_id
        )
        if not gen_kwargs["do_sample"]:
            # The LM's generation_config may carry sampling knobs; greedy must not warn about them.
            gen_kwargs.setdefault("temperature", None)
            gen_kwargs.setdefault("top_p", None)
            gen_kwargs.setdefault("top_k", None)
        out = self.lm.generate(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            max_new_tokens=max_new_tokens,
            **gen_kwargs,
        )
        # With inputs_embeds only, decoder-only models return just the new tokens.
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [_cut(text, stop).strip() for text in texts]

    # ------------------------------------------------------------------ persistence (bridges.saved)
    def describe(self) -> dict[str, Any]:
        """The JSON written next to the weights."""
        return saved.describe(self.bridge, self.lm_name, self.image_token, self.lora)

    def save(self, directory: str | Path) -> Path:
        """Write ``bridge.safetensors`` + ``bridge.json`` (+ ``lora.safetensors``) into ``directory`` (created)."""
        return saved.save_bridge(directory, self.bridge, self.lm, self.lora, self.describe())

    @classmethod
    def load(cls, directory: str | Path, lm: Any, tokenizer: Any, *, lm_name: str | None = None) -> BridgedLM:
        """Rebuild a saved bridge around ``lm`` / ``tokenizer`` (the LM itself is never saved).

        A bridge saved with LoRA re-applies its adapters to ``lm`` (in place) and loads their weights.
        """
        found = saved.open_saved(directory)  # checked before the bridge and adapters are allocated
        model = cls(
            lm,
            tokenizer,
            found.bridge,
            found.image_token,
            lm_name=lm_name if lm_name is not None else found.lm_name,
            lora=found.lora,
        )
        model.load_weights(directory)
        return model

    def load_weights(self, directory: str | Path, *, lora_may_be_absent: bool = False) -> None:
        """Copy a saved bridge's weights (and LoRA adapters) into this model; its settings must be the same.

        ``lora_may_be_absent``: a bridge saved *without* LoRA may seed a model *with* it (the adapters keep
        their fresh, zero-update start): LLaVA's stage 1 → stage 2.
        """
        saved.load_weights(directory, self.bridge, self.lm, self.lora, lora_may_be_absent=lora_may_be_absent)


def _cut(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first stop string (all of it if none occurs)."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(ends)] if ends else text
