"""Where encoded image bytes come from: local files and http(s) URLs, read under hard limits.

Both readers refuse before they spend: a local file must be a *regular* file
(``os.stat`` first, so a FIFO, ``/dev/zero``, a socket or a directory is never
opened) no larger than ``max_bytes``, and at most ``max_bytes + 1`` bytes are ever
read; a download must finish within ``timeout`` seconds in total, however slowly
the server drips, and is cut off past ``max_bytes``. Every failure is an
:class:`~experts.errors.ImageError` whose ``reason`` says why:

=============  =============================================================
``missing``     no such file (also a dangling symlink or an invalid path)
``unreadable``  it exists but cannot be read: permission denied, a symlink loop, an I/O error
``not_a_file``  a directory, FIFO, device or socket
``too_large``   more than ``max_bytes``
``fetch_failed`` a download failed or missed its deadline
=============  =============================================================

File names that are not valid UTF-8 reach Python as strings with lone
surrogates, which crash printing, JSON and Redis. :func:`portable_name` turns
such a path into a ``file://`` URI (its bytes percent-encoded, pure ASCII), and
:func:`read_file` accepts those URIs, so the name can travel anywhere and still
be read back.
"""

from __future__ import annotations

import errno
import http.client
import os
import socket
import stat
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from experts.errors import ImageError

#: Largest encoded input read, from disk or a download (bytes). A bigger file is refused unread.
DEFAULT_MAX_FILE_BYTES = 100_000_000


def is_url(text: str) -> bool:
    """``http://`` or ``https://``, in any case (``HTTP://`` is a URL too)."""
    return text[:8].lower().startswith(("http://", "https://"))


def is_file_uri(text: str) -> bool:
    return text[:7].lower() == "file://"


def portable_name(source: str) -> str:
    """``source`` itself when it is valid UTF-8; otherwise a ``file://`` URI that reads back to the same file.

    >>> portable_name("photos/cat.jpg")
    'photos/cat.jpg'
    >>> portable_name("/data/caf\\udce9.png")   # the byte 0xE9 of a Latin-1 name
    'file:///data/caf%E9.png'
    """
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        if is_url(source):
            return source.encode("utf-8", "backslashreplace").decode("ascii", "replace")
        return Path(os.path.abspath(source)).as_uri()
    return source


def local_path(source: str) -> str:
    """The filesystem path behind ``source``: a ``file://`` URI decoded to its exact bytes, else unchanged."""
    if not is_file_uri(source):
        return source
    parts = urllib.parse.urlsplit(source)
    if parts.netloc not in ("", "localhost"):
        raise ImageError(f"{source}: only local file:// URIs are read", reason="unsupported", source=source)
    return os.fsdecode(urllib.parse.unquote_to_bytes(parts.path))


# --------------------------------------------------------------------------- local files


def read_file(source: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file (a path or ``file://`` URI), or :class:`ImageError`."""
    name = portable_name(source)
    path = local_path(source)
    try:
        info = os.stat(path)  # follows symlinks: a link to /dev/zero is judged by /dev/zero
    except ValueError as exc:  # an embedded NUL byte: no file can have this name
        raise ImageError(f"{name!r}: not a valid file name ({exc})", reason="missing", source=name) from exc
    except OSError as exc:
        raise _os_error(name, exc) from exc
    _refuse_non_regular(info, name)
    if info.st_size > max_bytes:
        raise _too_big(name, f"{info.st_size} bytes", max_bytes)
    # O_NONBLOCK: if the path was swapped for a FIFO since stat, open() must not wait for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(name, exc) from exc
    with open(fd, "rb", closefd=True) as fh:
        try:
            _refuse_non_regular(os.fstat(fd), name)  # what we opened, not what we stat'ed
            data = fh.read(max_bytes + 1)  # a file that grew (or lies, like /proc) is still capped
        except OSError as exc:
            raise _os_error(name, exc) from exc
    if len(data) > max_bytes:
        raise _too_big(name, "its contents", max_bytes)
    return data


def _refuse_non_regular(st: os.stat_result, name: str) -> None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise ImageError(f"{name}: is {kind}; only regular files are read as images", reason="not_a_file", source=name)


def _os_error(name: str, exc: OSError) -> ImageError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ImageError(f"{name}: no such file", reason="missing", source=name)
    if exc.errno == errno.ELOOP:
        why = "too many levels of symbolic links (a symlink loop?)"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied"
    else:
        why = exc.strerror or type(exc).__name__
    return ImageError(f"{name}: cannot read file ({why})", reason="unreadable", source=name)


def _too_big(name: str, size: str, max_bytes: int) -> ImageError:
    return ImageError(
        f"{name}: {size} exceed the cap of {max_bytes} bytes (raise max_file_bytes if the image is genuine)",
        reason="too_large",
        source=name,
    )


# --------------------------------------------------------------------------- URLs


def fetch_url(url: str, *, timeout: float, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """Download ``url`` within ``timeout`` seconds *in total* and at most ``max_bytes``, or :class:`ImageError`.

    ``urllib``'s own timeout applies to each socket operation, so a server sending
    one byte per second never trips it; here a timer shuts the connection's
    socket when the deadline passes, whatever the download is doing then
    (resolving excepted: name lookup is not interruptible).
    """
    name = portable_name(url)
    deadline = _Deadline(timeout)
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),  # http(s) only: no handler for file:// or ftp:// is installed
        urllib.request.HTTPErrorProcessor(),
        _HTTPHandler(deadline),
        _HTTPSHandler(deadline),
    ):
        opener.add_handler(handler)
    chunks: list[bytes] = []
    received = 0
    try:
        with deadline, opener.open(url, timeout=timeout) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise _too_big(name, f"{declared} bytes (Content-Length)", max_bytes)
            while chunk := resp.read1(1 << 16):
                received += len(chunk)
                if received > max_bytes:
                    raise _too_big(name, "the downloaded bytes", max_bytes)
                chunks.append(chunk)
    except ImageError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if deadline.expired:
            raise _late(name, timeout) from exc
        raise ImageError(f"{name}: download failed ({exc})", reason="fetch_failed", source=name) from exc
    if deadline.expired:  # the shutdown can look like a normal end of data
        raise _late(name, timeout)
    return b"".join(chunks)


def _late(name: str, timeout: float) -> ImageError:
    return ImageError(
        f"{name}: download did not finish within {timeout:g} s (url_timeout)", reason="fetch_failed", source=name
    )


class _Deadline:
    """Shuts every socket of one download when ``seconds`` have passed since ``__enter__``."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._socks:
                sock.close()
            self._socks.clear()

    def watch(self, sock: socket.socket) -> None:
        # A duplicate descriptor of the same socket: shutting it down also stops the TLS
        # wrapper http.client builds around the original, and it can never be a reused fd.
        with self._lock:
            shadow = sock.dup()
            self._socks.append(shadow)
            if self.expired:
                _shutdown(shadow)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to stop


def _watched(base: type[http.client.HTTPConnection], deadline: _Deadline) -> type[http.client.HTTPConnection]:
    """``base`` whose sockets are handed to ``deadline`` the moment they are connected."""

    class Watched(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            create = self._create_connection

            def create_watched(*a, **kw) -> socket.socket:
                sock = create(*a, **kw)
                deadline.watch(sock)
                return sock

            self._create_connection = create_watched

    return Watched


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._connection = _watched(http.client.HTTPConnection, deadline)

    def http_open(self, req):
        return self.do_open(self._connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._connection = _watched(http.client.HTTPSConnection, deadline)

    def https_open(self, req):
        return self.do_open(self._connection, req, context=self._context)
