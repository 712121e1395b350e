"""A chat model's failures, said in one line: which model, why, and what to try.

refuses_forced_choice(err)                # a server rejecting tool_choice="any" (retry without it)
refuses_tool_history(err)                 # a server rejecting tool calls and results (retry with them as text)
raise model_failure("openai:gpt-4o", err) # ChatModelError: "chat model openai:gpt-4o failed: HTTP 401 ..."
"""

from __future__ import annotations

from experts.errors import ChatModelError


def refuses_forced_choice(err: BaseException) -> bool:
    """Does ``err`` look like a server rejecting a forced ``tool_choice`` (rather than being down)?

    An HTTP error answer (400, 422, 500, 501: what llama-cpp-python, vLLM and TGI send) or an
    error that names ``tool_choice``; never a connection failure or a timeout.

    >>> refuses_forced_choice(ValueError("tool_choice 'any' is not supported"))
    True
    >>> refuses_forced_choice(ConnectionError("tool_choice: connection refused"))
    False
    """
    if _status(err) in (400, 422, 500, 501):
        return True
    return "tool_choice" in str(err) and not _is_connection_error(err)


def refuses_tool_history(err: BaseException) -> bool:
    """Does ``err`` look like a server rejecting a request's tool calls and results (rather than being down)?

    An HTTP error answer (400, 422, 500): llama-cpp-python's server answers 500 ("Input should be a
    valid string") to the ``"content": null`` that OpenAI clients send with an assistant's tool calls.

    >>> refuses_tool_history(ConnectionError("connection refused"))
    False
    """
    return _status(err) in (400, 422, 500)


def model_failure(model_name: str, err: BaseException) -> ChatModelError:
    """One line for the user: which model failed, why, and what to try."""
    status = _status(err)
    if _is_connection_error(err):
        hint = "is the server running and reachable at the base URL? (or use a local model: --model auto)"
    elif "timeout" in type(err).__name__.lower() or "timed out" in str(err).lower():
        hint = "the server did not answer in time; try a smaller model or a longer timeout"
    elif status in (401, 403):
        hint = "check the API key (OPENAI_API_KEY or the provider's key variable)"
    elif status == 404:
        hint = "check the model name and the base URL (it usually ends in /v1)"
    elif isinstance(status, int) and status >= 500:
        hint = "the server failed on this request; its log says why"
    else:
        hint = "check the --model spec, or try another model"
    code = f"HTTP {status} " if isinstance(status, int) else ""
    return ChatModelError(f"chat model {model_name} failed: {code}{type(err).__name__}: {first_line(err)} — {hint}")


def _status(err: BaseException) -> int | None:
    """The HTTP status of a provider's error (openai's, httpx's), if it has one."""
    return getattr(err, "status_code", None) or getattr(getattr(err, "response", None), "status_code", None)


def _is_connection_error(err: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if isinstance(e, ConnectionError) or "Connect" in name or "ConnectionError" in name:
            return True
        e = e.__cause__ or e.__context__
    return False


def first_line(err: BaseException) -> str:
    """The error's first line, at most 300 characters (a server may send a whole HTML page)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 300 else line[:300] + "…"
