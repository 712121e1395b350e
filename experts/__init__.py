"""Expert vision models: loading, image intake, batched inference, evidence types.

>>> from experts import create_expert, list_experts, list_presets
>>> "clip" in list_experts()
True
>>> "timm.lite2" in list_presets()
True

The names below load on first use (PEP 562), so ``import experts.errors`` or
``experts.weights`` stays cheap: the command line's ``--help`` and its error handling
must not pay for importing torch. Asking for the registry (``create_expert``,
``list_experts``, …) imports every expert module first, which registers them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name → the submodule that defines it
_EXPORTS = {
    "Expert": "base",
    "FeatureExpert": "base",
    "ItemResult": "base",
    "ConfigError": "errors",
    "ChatModelError": "errors",
    "ExpertBridgeError": "errors",
    "ExpertRunError": "errors",
    "ImageError": "errors",
    "WeightsNotFoundError": "errors",
    "Caption": "evidence",
    "Classification": "evidence",
    "Detection": "evidence",
    "Detections": "evidence",
    "Features": "evidence",
    "RegionCaption": "evidence",
    "RegionCaptions": "evidence",
    "evidence_from_dict": "evidence",
    "Preset": "presets",
    "get_preset": "presets",
    "list_presets": "presets",
    "LoadedImage": "images",
    "load_image": "images",
    "load_images": "images",
    "create_expert": "registry",
    "get_expert_class": "registry",
    "list_experts": "registry",
    "register_expert": "registry",
    "WeightsRef": "weights",
    "is_offline": "weights",
    "resolve_weights": "weights",
    "check_stored_spec": "stored",
    "expert_from_stored": "stored",
    "stored_spec": "stored",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'experts' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"experts.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what static tools should see; at run time __getattr__ imports these on first use
    from experts.base import Expert, FeatureExpert, ItemResult  # noqa: F401
    from experts.errors import (  # noqa: F401
        ChatModelError,
        ConfigError,
        ExpertBridgeError,
        ExpertRunError,
        ImageError,
        WeightsNotFoundError,
    )
    from experts.evidence import (  # noqa: F401
        Caption,
        Classification,
        Detection,
        Detections,
        Features,
        RegionCaption,
        RegionCaptions,
        evidence_from_dict,
    )
    from experts.images import LoadedImage, load_image, load_images  # noqa: F401
    from experts.presets import Preset, get_preset, list_presets  # noqa: F401
    from experts.registry import create_expert, get_expert_class, list_experts, register_expert  # noqa: F401
    from experts.stored import check_stored_spec, expert_from_stored, stored_spec  # noqa: F401
    from experts.weights import WeightsRef, is_offline, resolve_weights  # noqa: F401
