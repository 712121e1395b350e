"""The class descriptions' reply cache: one SQLite file, one row per (model, class, question, …) key.

    cache = DescriptionCache("~/.cache/eb/descriptions")   # the file: descriptions.sqlite in there
    cache.put({"class": "ant", "question": "…"}, "1. An ant is a small insect.")
    cache.get({"class": "ant", "question": "…"})           # that reply; None on a miss

A key is any JSON-able mapping; its canonical JSON (sorted keys) is hashed into the row's key
and kept beside the reply, so ``sqlite3 descriptions.sqlite 'select key_json from replies'`` shows
what was asked. The cache only saves model calls: a file that can't be read or written (corrupt,
locked, not a database) is one logged warning and a miss, never a failed run. Caches written
before this module (one JSON file per key in the same directory) are ignored: those replies are
asked for once more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILENAME = "descriptions.sqlite"

# Stdlib sqlite3, not LangChain's set_llm_cache: that is process-global (it would cache the planner's
# calls too) and its SQLiteCache lives in langchain-community, which is not a dependency.
_SCHEMA = "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, key_json TEXT NOT NULL, reply TEXT NOT NULL)"


def key_json(key: Mapping[str, Any]) -> str:
    """The canonical JSON of a key: two equal mappings give the same text, whatever their order."""
    return json.dumps(key, sort_keys=True)


class DescriptionCache:
    """LLM replies by key in ``directory/descriptions.sqlite``; safe for threads and processes at once.

    Every call opens its own connection (SQLite's file locks, with a busy timeout, order concurrent
    writers), so one instance may serve a thread pool.
    """

    def __init__(self, directory: str | Path, timeout_s: float = 30.0) -> None:
        self.path = Path(directory).expanduser() / FILENAME
        self.timeout_s = timeout_s
        self._warned = False  # one warning per cache, not one per key

    def get(self, key: Mapping[str, Any]) -> str | None:
        """The reply stored under ``key``, or ``None`` (a miss, or a file that can't be read)."""
        if not self.path.exists():
            return None
        try:
            with closing(self._connect()) as db:
                row = db.execute("SELECT reply FROM replies WHERE key = ?", (_digest(key),)).fetchone()
        except (sqlite3.Error, OSError) as err:
            self._warn("read", err)
            return None
        return row[0] if row and isinstance(row[0], str) else None

    def put(self, key: Mapping[str, Any], reply: str) -> None:
        """Store ``reply`` under ``key`` (replacing any older one); a failure is a warning, not an error."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as db, db:  # the inner `with db` commits, or rolls back on error
                text = key_json(key)
                db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)", (_digest(key), text, reply))
        except (sqlite3.Error, OSError) as err:
            self._warn("write", err)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout_s)
        try:
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _warn(self, action: str, err: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("cannot %s the description cache %s (%s); treating it as empty", action, self.path, err)


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(key_json(key).encode()).hexdigest()
