"""The expert registry: one name per expert class, timm-style.

>>> "yolo" in list_experts()
True
>>> create_expert("timm", model="resnet18", weights=None).name   # doctest: +SKIP
'timm'
"""

from __future__ import annotations

from typing import Any, TypeVar

from experts.errors import ConfigError

_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_expert(cls: T) -> T:
    """Class decorator: make ``cls`` creatable as ``create_expert(cls.name, ...)``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(f"expert name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = cls
    return cls


def list_experts() -> list[str]:
    """Names accepted by :func:`create_expert`, sorted."""
    return sorted(_REGISTRY)


def get_expert_class(name: str) -> type:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown expert {name!r}; registered experts: {', '.join(list_experts())}") from None


def create_expert(name: str, **kwargs: Any):
    """Build a registered expert by name, e.g. ``create_expert("yolo", weights="yolov8n.pt", device="cpu")``.

    The expert remembers how it was made (``expert.spec``), so a saved model can rebuild it.
    """
    cls = get_expert_class(name)
    try:
        expert = cls(**kwargs)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ConfigError(f"expert {name!r}: {err}".replace("__init__() ", "")) from err
    expert.spec = {"name": name, **kwargs}
    return expert
