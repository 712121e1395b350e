"""Content-addressed keys for stored features.

A key is the sha256 of the image's content hash together with everything that
determines the expert's output (name, weights tag, preprocessing config). Any
change to any of them gives a different key, so a stale feature can never be
returned.

>>> k = feature_key("ab" * 32, {"expert": "timm", "weights": "w.pth@1234", "config": {"normalize": True}})
>>> len(k), k == feature_key("ab" * 32, {"config": {"normalize": True}, "weights": "w.pth@1234", "expert": "timm"})
(64, True)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, so equal configs hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def identity_digest(identity: Mapping[str, Any]) -> str:
    """Short stable digest of an expert identity (for namespacing and reports)."""
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]


def feature_key(image_sha256: str, identity: Mapping[str, Any], *, variant: Mapping[str, Any] | None = None) -> str:
    """Key of one image's feature under one expert identity.

    ``variant`` distinguishes derived inputs of the same image, e.g. the n-th
    augmented view used to build learnable cache keys (``{"aug": "flip-crop", "view": 3}``).
    """
    if len(image_sha256) != 64 or any(c not in "0123456789abcdef" for c in image_sha256):
        raise ValueError(f"image_sha256 must be a lowercase hex sha256, got {image_sha256!r}")
    payload = {"image": image_sha256, "identity": dict(identity), "variant": dict(variant or {})}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
