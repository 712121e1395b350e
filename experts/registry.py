"""The expert registry: one name per expert class, timm-style.

>>> "yolo" in list_experts()
True
>>> create_expert("timm", model="resnet18", weights=None).name   # doctest: +SKIP
'timm'

Where an expert name is accepted, so is a preset (``expert.tag``, :mod:`experts.presets`): the
registered expert with the preset's model and weights, e.g. ``create_expert("timm.lite2")``.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from typing import Any, TypeVar

from experts.errors import ConfigError
from experts.presets import get_preset, is_preset_name
from experts.weights import is_offline

_REGISTRY: dict[str, type] = {}
#: Modules whose import registers the built-in experts (imported on the registry's first use, not
#: when ``experts`` is imported: the command line's ``--help`` must not pay for torch).
BUILTIN_EXPERT_MODULES = (
    "captioner",
    "clip",
    "color_histogram",
    "dense_captioner",
    "detector",
    "dinov2",
    "timm_encoder",
)

T = TypeVar("T", bound=type)


def register_expert(cls: T) -> T:
    """Class decorator: make ``cls`` creatable as ``create_expert(cls.name, ...)``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(f"expert name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _load_builtin_experts() -> None:
    for module in BUILTIN_EXPERT_MODULES:
        importlib.import_module(f"experts.{module}")


def list_experts() -> list[str]:
    """Names accepted by :func:`create_expert`, sorted."""
    _load_builtin_experts()
    return sorted(_REGISTRY)


def get_expert_class(name: str) -> type:
    """The class of expert ``name`` (or of a preset's expert, e.g. ``timm.lite2`` → the ``timm`` class)."""
    _load_builtin_experts()
    if is_preset_name(name):
        name = get_preset(name).expert
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown expert {name!r}; registered experts: {', '.join(list_experts())}") from None


def expert_options(name: str) -> dict[str, Any]:
    """Keyword options of expert ``name`` → their type annotation (``Any`` when unannotated).

    An expert's options are its constructor's keywords plus those it passes on (``**kwargs``)
    to its base classes' constructors, e.g. ``yolo``: ``conf``, ``iou``, … and ``device``, ``batch_size``.
    A preset name gives its expert's options.
    """
    options: dict[str, Any] = {}
    for klass in get_expert_class(name).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - an annotation that cannot be resolved only loses its type
            hints = {}
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                options.setdefault(p.name, hints.get(p.name, Any))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return options


def create_expert(name: str, **kwargs: Any):
    """Build a registered expert by name, e.g. ``create_expert("yolo", weights="yolov8n.pt", device="cpu")``,
    or from a preset: ``create_expert("timm.lite2", device="cpu")`` (its options, then ``kwargs`` over them).

    An unknown option is a :class:`ConfigError` that lists the expert's options. The expert
    remembers how it was made (``expert.spec``: its expert name and every option given, a preset's
    included), so a saved model can rebuild it.
    """
    if is_preset_name(name):
        preset = get_preset(name)
        offline = kwargs["offline"] if kwargs.get("offline") is not None else is_offline()
        name, kwargs = preset.expert, {**preset.options_for(offline=offline), **kwargs}
    cls = get_expert_class(name)
    unknown = sorted(set(kwargs) - set(expert_options(name)))
    if unknown:
        raise ConfigError(
            f"expert {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(sorted(expert_options(name)))}"
        )
    expert = cls(**kwargs)
    expert.spec = {"name": name, **kwargs}
    return expert
