"""Chat models: one factory for local transformers LMs (with tool calling), OpenAI-compatible
servers, Ollama, any ``init_chat_model`` provider, and a scripted fake for tests.

======================  =====================================================================
module                  what
======================  =====================================================================
``factory``             :func:`create_chat_model` and its spec grammar, :data:`DEFAULT_LOCAL_MODEL`,
                        :func:`reply_cap` (the per-call reply-length keyword of a model)
``text_chat``           :class:`TextChatModel`: what the two in-process backends share (bind_tools,
                        prompt rendering with native or text tools, stop strings, the reply message)
``local``               :class:`LocalChatModel`: transformers causal LM (dir / hub id / GGUF)
``gguf_speedups``       one GGUF parse per transformers load, for the loading thread only
``llamacpp``            :class:`LlamaCppChatModel`: any GGUF through llama.cpp, in-process
``chat_template``       :func:`probe_template` (what a template renders natively), ChatML, GGUF templates
``scripted``            :class:`ScriptedChatModel`: deterministic replies and tool calls
``toolcalls/``          messages → chat-template dicts, the text tool prompt, parsing tool calls
======================  =====================================================================

    from agents.chat import create_chat_model
    llm = create_chat_model("auto")                           # the best offline model installed
    llm = create_chat_model("llamacpp:qwen2.5-coder-1.5b")    # Qwen2.5-Coder-1.5B GGUF via llama.cpp
    llm = create_chat_model("local")                          # SmolLM2-135M via transformers, offline
    llm = create_chat_model("openai-compatible:http://localhost:8000/v1|Qwen/Qwen2.5-7B-Instruct")
    llm = create_chat_model("ollama:llama3.2")
    llm = create_chat_model("openai:gpt-4o-mini")             # via langchain's init_chat_model
    reply = llm.bind_tools([detect_objects]).invoke("How many people are in the image?")
    reply.tool_calls                                          # [{'name': 'detect_objects', ...}]
"""

from agents.chat.chat_template import TemplateCapabilities, probe_template
from agents.chat.factory import DEFAULT_LOCAL_MODEL, best_local_model, create_chat_model, llama_cpp_available, reply_cap
from agents.chat.llamacpp import LLAMACPP_PRESETS, LlamaCppChatModel
from agents.chat.local import LocalChatModel, resolve_local_model
from agents.chat.scripted import ScriptedChatModel, ScriptExhaustedError
from agents.chat.text_chat import TextChatModel
from agents.chat.toolcalls import DEFAULT_TOOL_PROMPT, ParsedReply, parse_tool_calls, to_chat_dicts, to_prompt_dicts

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "DEFAULT_TOOL_PROMPT",
    "LLAMACPP_PRESETS",
    "LlamaCppChatModel",
    "LocalChatModel",
    "ParsedReply",
    "ScriptExhaustedError",
    "ScriptedChatModel",
    "TemplateCapabilities",
    "TextChatModel",
    "best_local_model",
    "create_chat_model",
    "llama_cpp_available",
    "parse_tool_calls",
    "probe_template",
    "reply_cap",
    "resolve_local_model",
    "to_chat_dicts",
    "to_prompt_dicts",
]
