"""User-derived text (file names, class names, error messages, model replies) made safe to print.

Two things break a terminal render after the work is done: Rich reads ``[...]`` as markup
(a path containing ``[/x]`` raises ``MarkupError``), and a file name that is not valid
UTF-8 reaches Python as a str with lone surrogates, which a UTF-8 stream refuses to write.

    console.print(f"[red]error:[/red] {markup(err)}")     # inside a markup string
    table.add_row(markup(row.source), ...)                 # Table cells are markup too
    typer.echo(plain(path))                                # no markup, just printable

HTML pages use :func:`html.escape`; matplotlib figures turn mathtext off (``$`` is literal),
see :mod:`workflows.report`.
"""

from __future__ import annotations

from rich.markup import escape


def plain(value: object) -> str:
    """``str(value)`` that any UTF-8 stream can write: undecodable file-name bytes show as ``\\xNN``."""
    text = str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # surrogate-escaped bytes (os.listdir of a non-UTF-8 name): show the original bytes
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # other lone surrogates: show their code points
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def markup(value: object) -> str:
    """:func:`plain` text with Rich markup escaped, for f-strings given to ``console.print`` or table cells."""
    return escape(plain(value))
