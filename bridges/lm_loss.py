"""The language model's own loss on a bridged batch, computed only where there is a label.

A VQA answer is 2 of ~20 positions, and the LM head (49k × 576 for SmolLM2) is a fifth of the model:
:func:`lm_loss` runs the decoder stack, then the head on the labelled positions only. The value is the
LM's own shifted, mean-reduced cross-entropy (a test compares them).
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100  # the label value HF causal-LM losses skip


def lm_loss(lm: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``lm`` over the labelled positions (``IGNORE_INDEX`` elsewhere)."""
    body, head = body_and_head(lm)
    if body is None:
        return lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels).loss
    hidden = body(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, shifted[keep])


def body_and_head(lm: Any) -> tuple[Any, Any]:
    """The decoder stack and the output head when the LM is the usual ``body → lm_head`` pair, else Nones."""
    config = getattr(lm, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None, None  # the head is more than a linear map: let the LM compute its own loss
    prefix = getattr(lm, "base_model_prefix", "")
    body = getattr(lm, prefix, None) if prefix else None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if body is None or head is None or body is lm:
        return None, None
    return body, head
