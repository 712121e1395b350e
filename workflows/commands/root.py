"""The root of the ``expertbridge`` command line: settings once, logging, and errors → exit codes.

Exit codes, for every command:

====  ===========================================================================
0     everything worked
1     some items failed (the command prints a summary line saying how many)
2     usage or configuration error: bad arguments, invalid settings, missing
      weights, no images found, an unreadable image given to ``ask``, a model
      server that cannot be reached — one line on stderr, no traceback
====  ===========================================================================

Every command group is built with :func:`command_group`; its ``invoke`` is the one place
where an expected failure (the project's error family, :class:`~experts.errors.ExpertBridgeError`,
or a model/server connection failure) becomes that one line and exit code 2. Anything
else is a bug and keeps its traceback.

Nothing heavy is imported here or at the top of any command module: ``expertbridge --help``
must not pay for torch, transformers, ultralytics or LangChain. Commands import what they
need inside their function.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from workflows.settings import Settings

#: stderr: progress, tables about the run, errors (stdout is kept for results scripts read)
console = Console(stderr=True)

#: The libraries whose exceptions mean "a model server or Redis could not be used" (not a bug of ours).
_SERVER_LIBRARIES = ("httpx", "httpcore", "openai", "ollama", "redis", "kombu", "requests", "urllib3")

#: Loggers of our own packages (``--verbose`` shows their debug lines).
_OUR_LOGGERS = ("experts", "cache", "bridges", "agents", "workflows")


class CommandGroup(TyperGroup):
    """A Typer group that turns expected failures into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as err:
            line = describe_failure(err)
            if line is None:
                raise  # a bug: keep the traceback
            console.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
            raise typer.Exit(2) from None


def command_group(**kwargs: Any) -> typer.Typer:
    """A ``typer.Typer`` whose errors follow the exit-code table above (use it for every command group)."""
    kwargs.setdefault("no_args_is_help", True)
    return typer.Typer(cls=CommandGroup, pretty_exceptions_show_locals=False, **kwargs)


def describe_failure(err: BaseException) -> str | None:
    """The one line a user reads for an expected failure, or None for a bug."""
    from experts.errors import ExpertBridgeError  # cheap: experts/__init__ is lazy

    if isinstance(err, ExpertBridgeError):
        return str(err)
    invalid = _invalid_settings(err)
    if invalid is not None:
        return invalid
    return server_failure(err)


def server_failure(err: BaseException, *, what: str = "a server", hint: str | None = None) -> str | None:
    """One line for a connection/API failure of a model server or Redis (what failed, what to try), else None."""
    for e in _causes(err):
        library = type(e).__module__.split(".")[0]
        if not (isinstance(e, (ConnectionError, TimeoutError)) or library in _SERVER_LIBRARIES):
            continue
        text = str(e).strip() or type(e).__name__
        if "api_key" in text.lower() or "api key" in text.lower() or type(e).__name__ == "AuthenticationError":
            hint = "set the provider's API key (e.g. OPENAI_API_KEY) or choose another --model"
        elif hint is not None:
            pass
        elif library == "ollama" or "ollama" in text.lower():
            hint = "start Ollama (`ollama serve`, then `ollama pull MODEL`) or choose another --model"
        elif library in ("redis", "kombu"):
            hint = "check that Redis runs at EXPERTBRIDGE_BROKER_URL"
        else:
            hint = "check that it is running and that its URL and model name are right"
        return f"could not use {what}: {type(e).__name__}: {text} — {hint}"
    return None


def _causes(err: BaseException) -> Iterator[BaseException]:
    """The error and its explicit causes (``raise ... from``), outermost first."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _invalid_settings(err: BaseException) -> str | None:
    """A pydantic ValidationError of :class:`Settings` as ``EXPERTBRIDGE_FIELD: problem`` lines."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError) or err.title != Settings.__name__:
        return None
    problems = "; ".join(
        f"EXPERTBRIDGE_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}" for e in err.errors()
    )
    return f"invalid setting: {problems}"


def settings_of(ctx: typer.Context | None) -> Settings:
    """The Settings the root callback built for this invocation (a sub-app run on its own builds its own)."""
    obj = ctx.find_root().obj if ctx is not None else None
    if isinstance(obj, Settings):
        return obj
    settings = Settings()
    if ctx is not None:
        ctx.find_root().obj = settings
    return settings


def configure_logging(*, verbose: bool = False, quiet: bool = False) -> None:
    """Our packages log at INFO (DEBUG with ``--verbose``, WARNING with ``--quiet``); others at WARNING.

    Rich's handler when stderr is a terminal, plain ``LEVEL name: message`` lines otherwise (logs, CI).
    """
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=verbose, rich_tracebacks=False)
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.set_name("expertbridge-cli")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "expertbridge-cli"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    ours = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(ours)
    if not verbose:
        # Ultralytics logs INFO lines to *stdout* ("Loading … for LiteRT inference"), which would mix
        # with what scripts read there (`JOB=$(expertbridge batch submit …)`). It reads YOLO_VERBOSE
        # once, when imported — later, inside a command.
        os.environ.setdefault("YOLO_VERBOSE", "False")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners and pipes swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def finish(ok: int, failed: int, note: str = "") -> None:
    """The summary line of a command over many items (``3 ok, 1 failed``); exit code 1 when any failed."""
    console.print(f"{ok} ok, {failed} failed{note}")
    if failed:
        raise typer.Exit(1)
