"""Expert vision models: loading, image intake, batched inference, evidence types.

>>> from experts import create_expert, list_experts
>>> "clip" in list_experts()
True
"""

from experts.base import Expert, FeatureExpert, ItemResult
from experts.errors import (
    ChatModelError,
    ConfigError,
    ExpertBridgeError,
    ExpertRunError,
    ImageError,
    WeightsNotFoundError,
)
from experts.evidence import (
    Caption,
    Classification,
    Detection,
    Detections,
    Features,
    RegionCaption,
    RegionCaptions,
    evidence_from_dict,
)
from experts.images import LoadedImage, load_image, load_images
from experts.registry import create_expert, get_expert_class, list_experts, register_expert
from experts.weights import WeightsRef, is_offline, resolve_weights

# Importing the modules registers the experts.
from experts import (  # noqa: E402,F401  isort: skip
    captioner,
    clip,
    color_histogram,
    dense_captioner,
    detector,
    dinov2,
    timm_encoder,
)

__all__ = [
    "Caption",
    "ChatModelError",
    "Classification",
    "ConfigError",
    "Detection",
    "Detections",
    "Expert",
    "ExpertBridgeError",
    "ExpertRunError",
    "FeatureExpert",
    "Features",
    "ImageError",
    "ItemResult",
    "LoadedImage",
    "RegionCaption",
    "RegionCaptions",
    "WeightsNotFoundError",
    "WeightsRef",
    "create_expert",
    "evidence_from_dict",
    "get_expert_class",
    "is_offline",
    "list_experts",
    "load_image",
    "load_images",
    "register_expert",
    "resolve_weights",
]
