"""Calls with a deadline: the planner's time budget holds *during* a model or tool call.

    run_with_deadline(lambda: model.invoke(messages), seconds=12.5)   # or TimeoutError

Python cannot stop a thread, so a call past its deadline is abandoned, not killed.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """``fn()``, or ``TimeoutError`` once ``seconds`` have passed without it returning.

    ``fn`` runs in a daemon thread (with this thread's context variables, which LangChain's
    callbacks use). Python cannot stop a thread: an overrunning call is *abandoned*, it finishes
    in the background and its result is dropped, and it never holds up the process's exit.

    >>> run_with_deadline(lambda: 42, 1.0)
    42
    """
    if seconds <= 0:
        raise TimeoutError("no time left")
    outcome: dict[str, Any] = {}
    finished = threading.Event()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(fn)
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = err
        finally:
            finished.set()

    threading.Thread(target=target, name="planner-call", daemon=True).start()
    if not finished.wait(min(seconds, threading.TIMEOUT_MAX)):
        raise TimeoutError(f"still running after {seconds:.1f}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
