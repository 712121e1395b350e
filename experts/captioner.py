"""Image captioning with transformers image-to-text models (BLIP, GIT, BLIP-2, Florence-2 …).

Weights: a hub id (``"Salesforce/blip-image-captioning-base"``) or a local
directory saved with ``save_pretrained``. ``trust_remote_code`` stays off unless
you turn it on.

>>> cap = create_expert("captioner", weights="Salesforce/blip-image-captioning-base")  # doctest: +SKIP
>>> cap("bus.jpg").text                                                                # doctest: +SKIP
'a blue bus parked on the side of the road'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from experts.base import Expert
from experts.errors import ConfigError
from experts.evidence import Caption
from experts.presets import default_option
from experts.registry import register_expert
from experts.weights import missing_weights_as_error


@register_expert
class Captioner(Expert):
    """Batched captions → :class:`Caption` (text + mean token log-probability)."""

    name = "captioner"
    evidence_type = Caption
    offline_hint = (
        "Save the model and processor with save_pretrained() to a directory and name it: "
        "EXPERTBRIDGE_CAPTIONER_WEIGHTS=DIR, or weights=DIR in Python."
    )
    stored_fields = {
        **Expert.stored_fields,
        **dict.fromkeys(("prompt", "max_new_tokens", "num_beams", "do_sample"), "value"),
    }  # never trust_remote_code
    bare_weights_names_are_hub_ids = True

    def __init__(
        self,
        *,
        weights: str | None = default_option("captioner", "weights"),
        prompt: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        do_sample: bool = False,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        if weights is None:
            raise ConfigError("captioner needs weights: a hub id or a local save_pretrained directory")
        if max_new_tokens < 1 or num_beams < 1:
            raise ConfigError("captioner: max_new_tokens and num_beams must be >= 1")
        super().__init__(weights=weights, **kwargs)
        self.prompt, self.max_new_tokens, self.num_beams, self.do_sample = prompt, max_new_tokens, num_beams, do_sample
        self.trust_remote_code = trust_remote_code

    @property
    def config(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
        }

    def _load(self):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        opts = {"local_files_only": self.offline, "trust_remote_code": self.trust_remote_code}
        with missing_weights_as_error(self.weights, expert=self.name, hint=self.offline_hint):
            self._processor = AutoProcessor.from_pretrained(self.weights.value, **opts)
            net = AutoModelForImageTextToText.from_pretrained(self.weights.value, **opts)
        return net.eval().requires_grad_(False).to(self.device)

    @property
    def processor(self):
        _ = self.model
        return self._processor

    def predict(self, images: Sequence[Image.Image]) -> list[Caption]:
        net, proc = self.model, self.processor
        text = [self.prompt] * len(images) if self.prompt else None
        inputs = proc(images=list(images), text=text, return_tensors="pt").to(self.device)
        # BLIP and GIT echo a conditional prompt; the echo is what the tokenizer decodes the prompt to
        # (BERT re-spaces punctuation: "of:" -> "of :"), so that is what gets stripped.
        echoes = proc.batch_decode(inputs["input_ids"], skip_special_tokens=True) if self.prompt else None
        out = net.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            do_sample=self.do_sample,
            output_scores=True,
            return_dict_in_generate=True,
        )
        texts = proc.batch_decode(out.sequences, skip_special_tokens=True)
        pad_id = getattr(getattr(proc, "tokenizer", None), "pad_token_id", None)
        scores = _mean_logprob(net, out, pad_id) if self.num_beams == 1 else [None] * len(texts)
        captions = []
        for i, (caption, score) in enumerate(zip(texts, scores)):
            caption = caption.strip()
            if echoes is not None:
                caption = _strip_echo(caption, (echoes[i].strip(), self.prompt.strip()))
            captions.append(Caption(caption, score))
        return captions


def _strip_echo(caption: str, prefixes: Sequence[str]) -> str:
    for prefix in prefixes:
        if prefix and caption.lower().startswith(prefix.lower()):
            return caption[len(prefix) :].strip()
    return caption


def _mean_logprob(net, out, pad_token_id: int | None) -> list[float | None]:
    """Mean log-probability of the generated tokens (a rough confidence), per sequence.

    Steps after a sequence's EOS are padding (the batch runs until its longest caption ends); they are
    left out so a caption's score does not depend on its batch neighbours.
    """
    try:
        steps = net.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    except Exception:  # noqa: BLE001 - confidence is optional; some models cannot report it
        return [None] * out.sequences.shape[0]
    valid = torch.isfinite(steps)
    if pad_token_id is not None:
        valid &= out.sequences[:, -steps.shape[-1] :] != pad_token_id
    finite = torch.where(valid, steps, torch.zeros_like(steps))
    counts = valid.sum(-1).clamp(min=1)
    return [float(x) for x in finite.sum(-1) / counts]
