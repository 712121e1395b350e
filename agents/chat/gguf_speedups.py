"""Parse a GGUF file once per transformers load, without changing what any other caller of ``gguf`` sees.

transformers (5.x) opens a new ``gguf.GGUFReader`` for the tokenizer, the config and the weights, and
rebuilds ``gguf.get_tensor_name_map`` once per sub-module (~400 times for a small llama). Both are pure
functions of their arguments, so during one load they can be memoized (SmolLM2-135M: 13 s → 5 s here).

transformers has no argument to pass a parsed reader in, and it imports both names from ``gguf`` inside
its functions at call time (``from gguf import GGUFReader``), so the only place to intercept them is the
``gguf`` module itself. What this module keeps narrow instead:

- *who sees the cache*: the installed names are dispatchers. A caller inside :func:`gguf_load_speedups`
  (this context: the thread that loads, via a ``ContextVar``) gets the memoized reader and name map of
  its own load; any other thread, or this one after the block, gets the original class and function.
- *how long*: the dispatchers are installed when the first load starts and removed when the last one
  ends (a lock and a count, so two threads loading at once neither clobber nor leak the originals); a
  name someone else replaced meanwhile is left as they set it.

    with gguf_load_speedups():
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        net = AutoModelForCausalLM.from_pretrained(d, gguf_file=f)   # the same parse as the tokenizer's
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _LoadCache:
    """One load's memo: readers by (real path, mode), name maps by their arguments."""

    readers: dict[tuple[str, str], Any] = field(default_factory=dict)
    name_maps: dict[tuple[Any, ...], Any] = field(default_factory=dict)


_active: ContextVar[_LoadCache | None] = ContextVar("expertbridge_gguf_load", default=None)
_lock = threading.Lock()
_users = 0
# (original reader class, original name-map function, our reader dispatcher, our name-map dispatcher)
_installed: tuple[Any, Callable[..., Any], Callable[..., Any], Callable[..., Any]] | None = None


def _dispatchers(reader_cls: Any, name_map: Callable[..., Any]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def reader(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        cache = _active.get()
        if cache is None or args or kwargs:  # outside a load (another thread), or a call we don't know
            return reader_cls(path, mode, *args, **kwargs)
        key = (os.path.realpath(os.fspath(path)), mode)
        if key not in cache.readers:
            cache.readers[key] = reader_cls(path, mode)
        return cache.readers[key]

    def tensor_name_map(*args: Any) -> Any:
        cache = _active.get()
        if cache is None:
            return name_map(*args)
        if args not in cache.name_maps:
            cache.name_maps[args] = name_map(*args)
        return cache.name_maps[args]

    reader.__wrapped__ = reader_cls  # type: ignore[attr-defined]
    tensor_name_map.__wrapped__ = name_map  # type: ignore[attr-defined]
    return reader, tensor_name_map


def _install(gguf: Any) -> bool:
    global _users, _installed
    with _lock:
        if _installed is None:
            reader_cls = getattr(gguf, "GGUFReader", None)
            name_map = getattr(gguf, "get_tensor_name_map", None)
            if reader_cls is None or name_map is None:  # gguf changed shape: no speed-up, no harm
                return False
            reader, tensor_name_map = _dispatchers(reader_cls, name_map)
            gguf.GGUFReader, gguf.get_tensor_name_map = reader, tensor_name_map
            _installed = (reader_cls, name_map, reader, tensor_name_map)
        _users += 1
        return True


def _uninstall(gguf: Any) -> None:
    global _users, _installed
    with _lock:
        _users -= 1
        if _users or _installed is None:
            return
        reader_cls, name_map, reader, tensor_name_map = _installed
        # Only undo our own names: a later replacement by someone else stays theirs.
        if gguf.GGUFReader is reader:
            gguf.GGUFReader = reader_cls
        if gguf.get_tensor_name_map is tensor_name_map:
            gguf.get_tensor_name_map = name_map
        _installed = None


@contextlib.contextmanager
def gguf_load_speedups() -> Iterator[None]:
    """Within the block (this thread only), ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` are memoized.

    Without the ``gguf`` package, or if it changed shape, this does nothing.

    >>> with gguf_load_speedups():
    ...     pass
    """
    try:
        import gguf
    except ImportError:
        yield
        return
    if not _install(gguf):
        yield
        return
    token = _active.set(_LoadCache())
    try:
        yield
    finally:
        _active.reset(token)
        _uninstall(gguf)


__all__ = ["gguf_load_speedups"]
