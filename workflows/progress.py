"""Progress of long work, visible whether or not anyone watches a terminal.

On a terminal it is a tqdm bar. Anywhere else (output piped to a file, CI logs, a
job runner) a bar prints nothing useful until it ends, so plain lines go to the
stream instead, at most one every ``interval`` seconds, plus the first and the last:

    features: 0/398 images (timm) 0 s
    features: 120/398 images (timm) 14 s
    features: 398/398 images (timm) 41 s, done

>>> import io
>>> out = io.StringIO()
>>> with Progress("runs", 2, unit="fits", stream=out, interval=0) as p:
...     p.advance(note="cache 1-shot")
...     p.advance()
>>> print(out.getvalue().replace(" 0 s", ""), end="")
runs: 0/2 fits
runs: 1/2 fits (cache 1-shot)
runs: 2/2 fits (cache 1-shot), done
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def quiet_library_bars(stream: TextIO | None = None) -> None:
    """If ``stream`` (default stderr) is not a terminal, turn off the tqdm bars libraries draw on their own
    (transformers' GGUF conversion, downloads): in a log each is one ever-growing line of carriage returns.

    tqdm reads ``TQDM_DISABLE`` when it is first imported, so this must run before anything imports it; the
    CLI's root callback does. :class:`Progress` prints plain lines there instead, without tqdm.
    """
    stream = stream if stream is not None else sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        os.environ.setdefault("TQDM_DISABLE", "1")


class Progress:
    """Counts ``total`` units of work; ``advance`` after each piece, ``close`` (or leave the ``with``) at the end."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "images",
        stream: TextIO | None = None,
        interval: float = 5.0,
        tty: bool | None = None,
        enabled: bool = True,
        note: str = "",
        initial: int = 0,
    ) -> None:
        """``interval``: seconds between plain lines; ``tty``: force bar (True) or lines (False);
        ``enabled=False``: count silently (callers need no ``if`` around progress); ``note``: shown beside the count;
        ``initial``: units already done (a resumed run)."""
        self.label, self.total, self.unit, self.interval = label, total, unit, interval
        self.stream = stream if stream is not None else sys.stderr
        self.done = initial
        self.note = note
        self._start = self._last = time.monotonic()
        is_tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        if not enabled:
            self._last = None  # never prints
        elif is_tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=label, unit=unit.rstrip("s") or unit, file=self.stream)
            if note:
                self._bar.set_postfix_str(note)
        else:
            self._line()

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more units done; ``note`` (e.g. the expert or the last result) is shown beside the count."""
        self.done += n
        if note is not None:
            self.note = note
        if self._bar is not None:
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)
        elif self._last is not None and time.monotonic() - self._last >= self.interval and self.done < self.total:
            self._line()

    # tqdm's names for the same two calls: code that may not import this module (bridges/) is handed a
    # Progress or a tqdm bar and uses only these
    def update(self, n: int = 1) -> None:
        self.advance(n)

    def set_postfix(self, **values) -> None:
        self.note = ", ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix_str(self.note, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._last is not None:
            self._line(", done")
        self._last = None  # closed: never print again

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self, suffix: str = "") -> None:
        note = f" ({self.note})" if self.note else ""
        elapsed = time.monotonic() - self._start
        self.stream.write(f"{self.label}: {self.done}/{self.total} {self.unit}{note} {elapsed:.0f} s{suffix}\n")
        self.stream.flush()
        self._last = time.monotonic()
