"""Chat models — the public entry point; the code lives in :mod:`agents.chat`.

One factory, :func:`create_chat_model`, for a local transformers causal LM with real tool
calling (:class:`LocalChatModel`), any OpenAI-compatible server, Ollama, and every
``init_chat_model`` string; plus :class:`ScriptedChatModel`, a deterministic fake that
emits tool calls, for tests. Spec grammar (details in :mod:`agents.chat.factory`):

======================================  ==================================================
``"local"``                             SmolLM2-135M-Instruct GGUF from PyPI, offline
                                        (:data:`DEFAULT_LOCAL_MODEL`)
``"local:pypi:DIST/FILE.gguf"``         a GGUF shipped in an installed PyPI package
``"local:/path/dir"`` / ``.gguf``       a save_pretrained directory or a GGUF file
``"local:ORG/NAME"``                    a hub id (``gguf_file=`` for a GGUF repo)
``"openai-compatible:URL|MODEL"``       vLLM, llama.cpp server, LM Studio … (langchain-openai)
``"ollama:MODEL"``                      an Ollama server (langchain-ollama)
``"scripted"``                          ``ScriptedChatModel(steps=[...])``
``"openai:gpt-4o-mini"``, …             ``langchain.chat_models.init_chat_model(spec, **kwargs)``
a ``BaseChatModel``                     returned as is
======================================  ==================================================

    from agents.chat_models import create_chat_model
    llm = create_chat_model("local", max_new_tokens=128)
    llm.bind_tools([detect_objects], tool_choice="any").invoke("How many people are in the image?")
"""

from agents.chat import (
    DEFAULT_LOCAL_MODEL,
    DEFAULT_TOOL_PROMPT,
    LocalChatModel,
    ParsedReply,
    ScriptedChatModel,
    ScriptExhaustedError,
    TemplateCapabilities,
    create_chat_model,
    parse_tool_calls,
    probe_template,
    resolve_local_model,
    to_chat_dicts,
    to_prompt_dicts,
)

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "DEFAULT_TOOL_PROMPT",
    "LocalChatModel",
    "ParsedReply",
    "ScriptExhaustedError",
    "ScriptedChatModel",
    "TemplateCapabilities",
    "create_chat_model",
    "parse_tool_calls",
    "probe_template",
    "resolve_local_model",
    "to_chat_dicts",
    "to_prompt_dicts",
]
