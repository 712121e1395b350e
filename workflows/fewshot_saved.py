"""A saved few-shot classifier: ``model.safetensors`` (the head's tensors) and ``config.json`` (the head's
settings, the classes, and each expert branch's spec and identity). No pickle anywhere: tensors load
through safetensors, the rest is JSON, and experts are rebuilt only from their stored plain fields.

The format (``expertbridge.fewshot/1``) is the one every version has written: the head's part of it is
:meth:`cache.head.FewShotHead.state`, the rest is the branches'.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache.head import FewShotHead
from cache.store import FeatureStore
from experts import ConfigError, Expert
from experts.stored import expert_from_stored, stored_spec
from workflows.settings import Settings

if TYPE_CHECKING:
    from workflows.fewshot import FewShotClassifier

FORMAT = "expertbridge.fewshot/1"


def save_classifier(clf: FewShotClassifier, path: str | Path) -> Path:
    """Write ``clf`` to the directory ``path`` (see :meth:`~workflows.fewshot.FewShotClassifier.save`)."""
    from safetensors.torch import save_file

    tensors, head_config = clf.model.state()
    report = head_config.pop("report")  # written last, after the branches, as it always was
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    config = {
        "format": FORMAT,
        "classnames": list(clf.classnames),
        "method": clf.method,
        **head_config,  # fusion, prior, alpha, beta, gda_alpha, head, linear_c, linear_samples
        "clip_branch": clf.clip_branch,
        "branches": [{"name": n, "spec": stored_spec(e), "identity": e.identity} for n, e in clf.experts.items()],
        "report": report,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2, default=str))
    return path


def load_classifier(
    cls: type[FewShotClassifier],
    path: str | Path,
    *,
    experts: Mapping[str, Expert] | None = None,
    store: FeatureStore | None = None,
    settings: Settings | None = None,
    **expert_overrides: Any,
) -> FewShotClassifier:
    """Read a directory :func:`save_classifier` wrote (see :meth:`~workflows.fewshot.FewShotClassifier.load`)."""
    from safetensors.torch import load_file

    path = Path(path)
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{config_file}: not a readable saved classifier config ({err})") from err
    found = config.get("format") if isinstance(config, dict) else type(config).__name__
    if found != FORMAT:
        raise ConfigError(f"{path}: not a saved few-shot classifier ({found!r})")
    branches = config.get("branches")
    if not isinstance(branches, list) or not all(isinstance(b, dict) and "name" in b for b in branches):
        raise ConfigError(f"{config_file}: 'branches' must be a list of {{'name', 'spec', 'identity'}} objects")
    tensors = load_file(str(path / "model.safetensors"))
    built: dict[str, Expert] = {}
    for b in branches:
        expert = (experts or {}).get(b["name"])
        if expert is None:
            if not b.get("spec"):
                raise ConfigError(f"branch {b['name']!r} was not made by create_expert; pass experts={{...}}")
            settings = settings or Settings()
            expert = expert_from_stored(
                b["spec"], source=str(config_file), runtime=settings.expert_kwargs, overrides=expert_overrides
            )
        if expert.identity != b.get("identity"):
            raise ConfigError(
                f"branch {b['name']!r}: expert identity {expert.identity} differs from the saved one "
                f"{b['identity']}; its features would not match the cache keys"
            )
        built[b["name"]] = expert
    clip = built.get(config["clip_branch"]) if config["clip_branch"] else None
    others = [e for n, e in built.items() if n != config["clip_branch"]]
    clf = cls(others, clip=clip, method=config["method"], fusion=config["fusion"], prior=config["prior"], store=store)
    clf.experts = clf.given_experts = built
    clf.classnames = tuple(config["classnames"])
    try:
        clf.model = FewShotHead.from_state(
            tensors,
            config,
            method=config["method"],
            branches=list(built),
            classnames=clf.classnames,
            keep=(config["clip_branch"],) if config["clip_branch"] else (),
        )
    except ConfigError as err:
        raise ConfigError(f"{config_file}: {err}") from err
    return clf
