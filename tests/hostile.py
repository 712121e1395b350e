"""A hostile-input corpus for image intake, generated at run time (nothing binary is committed).

Every case is a small file (or a special file, or a URL) that once hurt intake:
huge declared dimensions in a few KB, extreme aspect ratios, a FIFO or ``/dev/zero``
posing as a ``.jpg``, symlink loops, sparse giant files, broken and fake images,
non-UTF-8 file names, slow and oversized URLs. Each comes with the ``reason`` code
intake must give (or ``None`` when the input must simply load), so the same corpus
drives ``load_image``, ``Expert.run`` and, end to end, ``expertbridge run``,
``fewshot predict`` and ``batch submit``.

API
---
``write_corpus(directory) -> list[HostileCase]``
    Writes the local cases (and a few good neighbour images, ``reason=None``) into
    ``directory`` and returns them. ``case.path`` is what to pass as a source.
    Cases with ``listed=True`` are exactly the items ``scan_inputs([directory])``
    yields; the others are passed explicitly (system paths such as ``/dev/zero``,
    a directory named ``dir.jpg`` — expansion descends into it instead).
    Cases with ``needs_unprivileged=True`` (a ``chmod 000`` file) are only refused
    when the reader is not root: read them inside :func:`unprivileged`.
    ``heavy=False`` leaves out the two cases that take a second to generate.

``write_big_batch(directory, n=16, side=8000) -> list[HostileCase]``
    ``n`` distinct ``side × side`` greyscale PNGs of ~60 KB each that decode to
    ``side²`` pixels (64 MP at the default): a batch that once reached 5 GB of RSS.

``serve_hostile() -> ContextManager[str]``
    A local HTTP server thread on 127.0.0.1 (yields its base URL, stops itself on
    exit) with ``/ok.png``, ``/slow.png`` (1 byte/s after the headers),
    ``/slow-headers.png`` (headers at 1 byte/s), ``/huge.png`` (endless body) and
    ``/missing.png`` (404). ``url_cases(base_url)`` lists them as cases
    (load them with ``allow_urls=True``; ``HTTP://`` in capitals is one of them).

``unprivileged() -> ContextManager[bool]``
    Runs the body with the effective uid/gid of ``nobody`` when the process is root
    (so file permissions apply), restoring root afterwards; yields ``False`` when no
    unprivileged user exists (callers skip). Without root it is a no-op yielding ``True``.

Every generated PNG is written by :func:`write_png`, which streams rows through
zlib: making a 3,000,000 × 20 or an 8000 × 8000 image costs a few MB, never the
decoded size, so the generator itself is safe to run inside a memory measurement.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Seconds any single local case may take at intake (a hang is a failure).
LOCAL_DEADLINE = 10.0
#: Timeout handed to ``load_image(url_timeout=...)`` for the slow-URL cases, and their deadline.
URL_TIMEOUT = 2.0
URL_DEADLINE = URL_TIMEOUT + 2.0


@dataclass(frozen=True)
class HostileCase:
    """One input and what intake must make of it."""

    name: str
    path: str  # the source to pass (a path, a system path, or a URL)
    reason: str | None  # expected ``ImageError.reason``; ``None``: must load fine
    listed: bool = True  # yielded by ``scan_inputs([corpus_dir])``
    needs_unprivileged: bool = False  # refused only when the reader is not root
    deadline: float = LOCAL_DEADLINE  # seconds intake may take on it
    note: str = ""


# --------------------------------------------------------------------------- writers


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


#: PNG (colour type, bit depth, bytes per pixel) of each mode :func:`write_png` writes.
_PNG_MODES = {"L": (0, 8, 1), "I;16": (0, 16, 2), "RGBA": (6, 8, 4)}


def write_png(
    path: str | os.PathLike | bytes,
    width: int,
    height: int,
    *,
    mode: str = "L",
    rows: int | None = None,
    text: str = "",
) -> int:
    """Write a black PNG (``mode`` L, I;16 or RGBA) declaring ``width × height``; returns its size in bytes.

    Rows are compressed one at a time (memory ~ one row). ``rows`` < ``height``
    writes a header that promises more pixels than the data holds (a bomb that
    only lies); ``text`` adds a ``tEXt`` chunk so otherwise identical images differ.
    """
    color_type, depth, bpp = _PNG_MODES[mode]
    rows = height if rows is None else rows
    comp = zlib.compressobj(6)
    row = bytes(1 + width * bpp)  # filter byte 0, then zeros
    idat = io.BytesIO()
    for _ in range(rows):
        idat.write(comp.compress(row))
    idat.write(comp.flush())
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
    if text:
        data += _chunk(b"tEXt", b"Comment\x00" + text.encode())
    data += _chunk(b"IDAT", idat.getvalue()) + _chunk(b"IEND", b"")
    with open(path, "wb") as fh:
        fh.write(data)
    return len(data)


def _small_image_bytes(fmt: str, size: tuple[int, int] = (64, 48), color=(200, 40, 90)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 4):  # some structure, so JPEG has real entropy-coded data
        img.putpixel((x, x % size[1]), (x * 3 % 256, 255 - x % 256, 7))
    img.save(buf, format=fmt, quality=90) if fmt == "JPEG" else img.save(buf, format=fmt)
    return buf.getvalue()


def _jpeg_with_declared_size(width: int, height: int) -> bytes:
    """A small valid JPEG whose SOF header is patched to claim ``width × height``."""
    data = bytearray(_small_image_bytes("JPEG"))
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5 : at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise AssertionError("no SOF marker in the generated JPEG")


def _gif_with_declared_size(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame claim ``width × height`` (a few bytes of data)."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def _bmp_with_declared_size(width: int, height: int) -> bytes:
    """A BMP header claiming ``width × height`` 24-bit pixels, with almost no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    body = b"\x00" * 64
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(body), 0, 0, 54) + info + body


# --------------------------------------------------------------------------- corpus


def write_corpus(directory: str | os.PathLike, *, heavy: bool = True) -> list[HostileCase]:
    """Write the local hostile cases and good neighbours into ``directory``; see the module docstring."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cases: list[HostileCase] = []

    def add(name: str, reason: str | None, note: str, **kw) -> None:
        cases.append(HostileCase(name, kw.pop("path", str(d / name)), reason, note=note, **kw))

    # Good neighbours: every batch that holds a hostile case holds these too, and they must succeed.
    for i, fmt in enumerate(("PNG", "JPEG", "PNG")):
        name = f"good_{i}.{'png' if fmt == 'PNG' else 'jpg'}"
        (d / name).write_bytes(_small_image_bytes(fmt, color=(40 * i, 120, 200 - 30 * i)))
        add(name, None, "a good image: must succeed next to the hostile ones")

    # Dimensions: a few KB that decode to gigabytes.
    if heavy:
        write_png(d / "wide_3000000x20.png", 3_000_000, 20)
        add("wide_3000000x20.png", "aspect_ratio", "58 KB, 60 MP under the pixel cap; timm resize once asked ~22 GB")
        write_png(d / "square_8000x8000.png", 8000, 8000)
        add("square_8000x8000.png", None, "64 MP at the cap: must load, with bounded memory")
        write_png(d / "square16_8000x8000.png", 8000, 8000, mode="I;16")
        add("square16_8000x8000.png", None, "64 MP, 16-bit grey: scaled to 8 bits in strips")
        write_png(d / "square_rgba_8000x8000.png", 8000, 8000, mode="RGBA")
        add("square_rgba_8000x8000.png", None, "64 MP RGBA: composited on white without extra canvases")
    write_png(d / "tall_20x3000000.png", 20, 3_000_000, rows=1)
    add("tall_20x3000000.png", "aspect_ratio", "1:150000, header only")
    write_png(d / "bomb_100000x100000.png", 100_000, 100_000, rows=1)
    add("bomb_100000x100000.png", "too_large", "PNG header claims 10 gigapixels")
    write_png(d / "bomb_20000x20000.png", 20_000, 20_000, rows=1)
    add("bomb_20000x20000.png", "too_large", "400 MP, above the cap, square")
    (d / "bomb_jpeg_65000x65000.jpg").write_bytes(_jpeg_with_declared_size(65_000, 65_000))
    add("bomb_jpeg_65000x65000.jpg", "too_large", "JPEG SOF patched to claim 4.2 GP")
    (d / "bomb_gif_65535x65535.gif").write_bytes(_gif_with_declared_size(65_535, 65_535))
    add("bomb_gif_65535x65535.gif", "too_large", "GIF screen claims 4.3 GP in 40 bytes")
    (d / "bomb_bmp_50000x50000.bmp").write_bytes(_bmp_with_declared_size(50_000, 50_000))
    add("bomb_bmp_50000x50000.bmp", "too_large", "BMP header claims 2.5 GP")
    (d / "sliver_1x60.png").write_bytes(_small_image_bytes("PNG", size=(60, 1)))
    add("sliver_1x60.png", "aspect_ratio", "tiny but 60:1")
    (d / "panorama_50x1.png").write_bytes(_small_image_bytes("PNG", size=(500, 10)))
    add("panorama_50x1.png", None, "exactly the 50:1 limit: accepted")

    # Not regular files: must be refused from stat alone, never opened (a FIFO would block).
    os.mkfifo(d / "fifo.jpg")
    add("fifo.jpg", "not_a_file", "a FIFO: open() would block forever")
    os.symlink("/dev/zero", d / "zero.jpg")
    add("zero.jpg", "not_a_file", "symlink to /dev/zero: endless bytes")
    os.symlink("/dev/urandom", d / "urandom.png")
    add("urandom.png", "not_a_file", "symlink to /dev/urandom")
    add("dev_zero", "not_a_file", "/dev/zero itself", path="/dev/zero", listed=False)
    add("dev_null", "not_a_file", "/dev/null: a device, not an empty file", path="/dev/null", listed=False)
    (d / "dir.jpg").mkdir()
    add("dir.jpg", "not_a_file", "a directory named like an image (expansion descends into it)", listed=False)
    sock_path = d / "sock.png"
    with contextlib.suppress(OSError):  # AF_UNIX paths are limited to ~107 bytes
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(str(sock_path))
        add("sock.png", "not_a_file", "a Unix socket")

    # Links that go nowhere.
    os.symlink("loop_b.jpg", d / "loop_a.jpg")
    os.symlink("loop_a.jpg", d / "loop_b.jpg")
    add("loop_a.jpg", "unreadable", "symlink loop a -> b -> a")
    add("loop_b.jpg", "unreadable", "symlink loop b -> a -> b")
    os.symlink("self.jpg", d / "self.jpg")
    add("self.jpg", "unreadable", "symlink to itself")
    os.symlink("nowhere.jpg", d / "dangling.jpg")
    add("dangling.jpg", "missing", "dangling symlink")
    add("absent.jpg", "missing", "no such file", listed=False)

    # Bytes that are not (whole) images.
    (d / "empty.jpg").write_bytes(b"")
    add("empty.jpg", "empty", "0 bytes")
    jpeg = _small_image_bytes("JPEG")
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    add("truncated.jpg", "truncated", "JPEG cut in half")
    png = _small_image_bytes("PNG", size=(256, 256))
    (d / "truncated.png").write_bytes(png[: len(png) - 40])
    add("truncated.png", "truncated", "PNG missing its tail")
    (d / "header_only.png").write_bytes(png[:33])
    add("header_only.png", "not_an_image", "PNG signature + IHDR, nothing else (PIL cannot identify it)")
    write_png(d / "zero_width.png", 0, 10)
    add("zero_width.png", "not_an_image", "PNG header declaring 0 x 10")
    (d / "text.jpg").write_text("definitely not a jpeg\n" * 10)
    add("text.jpg", "not_an_image", "text with an image suffix")
    (d / "page.png").write_text("<!doctype html><html><body>404 Not Found</body></html>")
    add("page.png", "not_an_image", "an HTML error page saved as .png")
    (d / "random.webp").write_bytes(bytes(range(256)) * 8)
    add("random.webp", "not_an_image", "arbitrary bytes")
    with open(d / "sparse_200MB.jpg", "wb") as fh:  # sparse: costs no disk
        fh.write(jpeg[:64])
        fh.truncate(200_000_000)
    add("sparse_200MB.jpg", "too_large", "200 MB sparse file over the 100 MB byte cap")

    # Names: bytes that are not UTF-8 (Python carries them as lone surrogates).
    bad_good = os.fsdecode(os.fsencode(str(d)) + b"/latin1_caf\xe9.png")
    Path(bad_good).write_bytes(_small_image_bytes("PNG", color=(1, 2, 3)))
    add("latin1_caf\\xe9.png", None, "valid image, non-UTF-8 name: processed", path=bad_good)
    bad_bad = os.fsdecode(os.fsencode(str(d)) + b"/broken_\xff\xfe.jpg")
    Path(bad_bad).write_text("not an image either")
    add("broken_\\xff\\xfe.jpg", "not_an_image", "bad bytes, non-UTF-8 name: fails alone, printably", path=bad_bad)

    # Permissions: root reads anything, so this one needs `unprivileged()`.
    (d / "locked.png").write_bytes(_small_image_bytes("PNG"))
    os.chmod(d / "locked.png", 0)
    add("locked.png", "unreadable", "chmod 000 (refused only when not root)", needs_unprivileged=True)
    return cases


def write_big_batch(directory: str | os.PathLike, *, n: int = 16, side: int = 8000) -> list[HostileCase]:
    """``n`` distinct ``side × side`` greyscale PNGs (~60 KB each for 8000); all must load."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        name = f"big_{i:02d}_{side}x{side}.png"
        write_png(d / name, side, side, text=f"copy {i}")
        out.append(HostileCase(name, str(d / name), None, note=f"{side}x{side}, one of {n} in a batch"))
    return out


def write_locked_tree(directory: str | os.PathLike) -> tuple[Path, list[str]]:
    """A tree with one good image and two subdirectories that cannot be listed (``chmod 000``).

    Returns ``(root, locked_dirs)``; ``scan_inputs([root])`` run unprivileged must
    report exactly ``locked_dirs`` as unreadable and still yield the good image.
    """
    root = Path(directory)
    (root / "ok").mkdir(parents=True, exist_ok=True)
    (root / "ok" / "fine.png").write_bytes(_small_image_bytes("PNG"))
    locked = []
    for name in ("locked_a", "nested/locked_b"):
        sub = root / name
        sub.mkdir(parents=True)
        (sub / "hidden.png").write_bytes(_small_image_bytes("PNG"))
        os.chmod(sub, 0)
        locked.append(str(sub))
    return root, locked


# --------------------------------------------------------------------------- privileges


@contextlib.contextmanager
def unprivileged() -> Iterator[bool]:
    """Run the body as ``nobody`` (effective ids only) when root; see the module docstring."""
    if os.geteuid() != 0:
        yield True
        return
    try:
        import pwd

        nobody = pwd.getpwnam("nobody")
    except (ImportError, KeyError):
        yield False
        return
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield True
    finally:
        os.seteuid(0)
        os.setegid(0)


# --------------------------------------------------------------------------- URLs


class _Handler(http.server.BaseHTTPRequestHandler):
    ok_png = b""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _dribble(self, data: bytes, stop: threading.Event) -> None:
        for byte in data:
            if stop.is_set():
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            stop.wait(1.0)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        stop: threading.Event = self.server.stop  # type: ignore[attr-defined]
        path = self.path.lower()
        try:
            if path == "/ok.png":
                self._send(200, self.ok_png)
            elif path == "/slow.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(self.ok_png)))
                self.end_headers()
                self._dribble(self.ok_png, stop)
            elif path == "/slow-headers.png":
                self._dribble(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 600 + b"\r\n\r\n", stop)
            elif path == "/huge.png":
                self.send_response(200)
                self.end_headers()
                chunk = self.ok_png + b"\x00" * (1 << 20)
                deadline = time.monotonic() + 30  # bounded even if nobody hangs up
                while not stop.is_set() and time.monotonic() < deadline:
                    self.wfile.write(chunk)
            else:
                self._send(404, b"not found")
        except OSError:
            pass  # the client hung up: that is what a deadline or byte cap does

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False


@contextlib.contextmanager
def serve_hostile() -> Iterator[str]:
    """Serve the URL cases on 127.0.0.1 from a thread; yields ``http://127.0.0.1:PORT``."""
    handler = type("Handler", (_Handler,), {"ok_png": _small_image_bytes("PNG")})
    server = _Server(("127.0.0.1", 0), handler)
    server.stop = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.stop.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()
        thread.join(5)


def url_cases(base_url: str) -> list[HostileCase]:
    """The URL cases served by :func:`serve_hostile` (load with ``allow_urls=True, url_timeout=URL_TIMEOUT``)."""
    upper = base_url.replace("http://", "HTTP://", 1)
    return [
        HostileCase("url_ok", f"{base_url}/ok.png", None, listed=False, note="a good URL"),
        HostileCase("url_upper", f"{upper}/ok.png", None, listed=False, note="HTTP:// in capitals is a URL"),
        HostileCase(
            "url_slow_body",
            f"{base_url}/slow.png",
            "fetch_failed",
            listed=False,
            deadline=URL_DEADLINE,
            note="body at 1 byte/s: the timeout is a total deadline",
        ),
        HostileCase(
            "url_slow_headers",
            f"{base_url}/slow-headers.png",
            "fetch_failed",
            listed=False,
            deadline=URL_DEADLINE,
            note="headers at 1 byte/s",
        ),
        HostileCase("url_huge", f"{base_url}/huge.png", "too_large", listed=False, note="endless body over the cap"),
        HostileCase("url_404", f"{base_url}/missing.png", "fetch_failed", listed=False, note="HTTP 404"),
    ]
