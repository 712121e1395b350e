"""Image intake: anything a user hands us → a validated RGB image + a content hash.

Accepted sources: a filesystem path (or ``file://`` URI), raw encoded bytes, a
``PIL.Image``, a numpy array (``HxW``, ``HxWx3``, ``HxWx4``; uint8, uint16 or float
in ``[0, 1]``), and an ``http(s)://`` URL (any case) only when the caller opts in
with ``allow_urls=True``.

Limits, all checked before anything large is allocated (a few KB of PNG can
declare gigapixels, PIL reads the header lazily): ``max_file_bytes`` on the
encoded input (files are ``stat``-ed first and must be regular files, see
:mod:`experts.sources`), then ``max_pixels`` and ``max_aspect_ratio`` on the
header's width and height, before a single pixel is decoded. The aspect cap
exists because models resize the *shorter* side: a 3,000,000 × 20 strip is under
the pixel cap yet asks a 256-pixel resize for ~10 gigapixels.

Every failure is an :class:`~experts.errors.ImageError` with a ``reason`` code.
The content hash is the sha256 of the encoded bytes (files, bytes, URLs) or of
the raw pixels plus mode and size (in-memory images), so it is stable across
calls and processes and can key the feature store.

>>> img = load_image(np.zeros((4, 6, 3), dtype=np.uint8))
>>> img.size, img.image.mode
((6, 4), 'RGB')
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from experts.errors import ImageError
from experts.sources import DEFAULT_MAX_FILE_BYTES, fetch_url, is_url, portable_name, read_file

# Partial files must fail loudly, never be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

try:  # phone photos (HEIC/HEIF); also stops Ultralytics from pip-installing it at run time
    from pi_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - optional
    pass

#: Default pixel cap (width × height). Larger images are refused as possible
#: decompression bombs; pass ``max_pixels`` to raise or lower it.
DEFAULT_MAX_PIXELS = 64_000_000
#: Default cap on long side / short side. Wider panoramas and taller strips are refused
#: (reason ``aspect_ratio``): resizing their short side to a model's input size would
#: blow the long side up by the same factor.
DEFAULT_MAX_ASPECT_RATIO = 50.0

__all__ = [
    "DEFAULT_MAX_ASPECT_RATIO",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "EncodedImage",
    "ImageSource",
    "LoadedImage",
    "content_sha256",
    "describe_source",
    "ensure_loaded",
    "load_image",
    "load_images",
    "sha256_file",
]

ImageSource = Union[str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray, "LoadedImage", "EncodedImage"]


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded, orientation-corrected RGB image and where it came from."""

    image: Image.Image
    sha256: str
    source: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


@dataclass(frozen=True, eq=False)
class EncodedImage:
    """An image file's bytes, already read (and hashed) but not decoded.

    Whoever hashed a file to look it up in the feature store hands this on, so a miss is
    decoded from the same bytes instead of reading the file a second time. Decoding it
    (:func:`load_image`) applies the pixel and aspect caps as for any source.

    >>> load_image(EncodedImage(b"not an image", "0" * 64, "x.png"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    experts.errors.ImageError: x.png: not an image (unrecognized format)
    """

    data: bytes
    sha256: str
    source: str


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    allow_urls: bool = False,
    url_timeout: float = 10.0,
) -> LoadedImage:
    """Decode ``source`` into a :class:`LoadedImage` or raise :class:`ImageError`.

    ``url_timeout`` is the whole download's deadline in seconds, not a per-read timeout.
    """
    if isinstance(source, LoadedImage):
        return source
    limits = (max_pixels, max_aspect_ratio)
    if isinstance(source, EncodedImage):
        return _from_bytes(source.data, source.source, limits, digest=source.sha256)
    if isinstance(source, Image.Image):
        return _from_pil(source, "<PIL.Image>", limits)
    if isinstance(source, np.ndarray):
        return _from_pil(_array_to_pil(source), "<ndarray>", limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), "<bytes>", limits)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(text, str) and is_url(text):
            if not allow_urls:
                raise ImageError(
                    f"{portable_name(text)}: URLs are not fetched unless you opt in: "
                    "EXPERTBRIDGE_ALLOW_URLS=1 (allow_urls=True in Python)",
                    reason="url_disabled",
                    source=portable_name(text),
                )
            data = fetch_url(text, timeout=url_timeout, max_bytes=max_file_bytes)
            return _from_bytes(data, portable_name(text), limits)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        return _from_bytes(read_file(text, max_bytes=max_file_bytes), portable_name(text), limits)
    raise ImageError(
        f"cannot read an image from {type(source).__name__}; pass a path, bytes, PIL image or numpy array",
        reason="unsupported",
        source=repr(source)[:80],
    )


def load_images(sources: Iterable[ImageSource], **kwargs) -> list[LoadedImage | ImageError]:
    """Load many images; a bad one becomes its :class:`ImageError`, the rest still load."""
    out: list[LoadedImage | ImageError] = []
    for src in sources:
        try:
            out.append(load_image(src, **kwargs))
        except ImageError as err:
            out.append(err)
    return out


def describe_source(source: ImageSource) -> str:
    """A short printable name for a source, for reports and error messages."""
    if isinstance(source, (LoadedImage, EncodedImage)):
        return source.source
    if isinstance(source, (str, os.PathLike)):
        return portable_name(os.fsdecode(source))
    return f"<{type(source).__name__}>"


def sha256_file(path: str | Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> str:
    """Content hash of a file on disk, identical to ``load_image(path).sha256``."""
    return hashlib.sha256(read_file(os.fsdecode(path), max_bytes=max_file_bytes)).hexdigest()


def content_sha256(source: ImageSource, **kwargs) -> str:
    """The content hash ``load_image(source).sha256`` would give, without decoding when possible.

    Files and bytes are only hashed (fast: this is what makes a warm feature
    store cheap); in-memory images and URLs are loaded. Takes
    :func:`load_image`'s keyword arguments. Raises :class:`ImageError`.
    """
    if isinstance(source, (LoadedImage, EncodedImage)):
        return source.sha256
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise ImageError("<bytes>: empty file (0 bytes)", reason="empty", source="<bytes>")
        return hashlib.sha256(bytes(source)).hexdigest()
    if isinstance(source, (str, os.PathLike)) and not is_url(os.fsdecode(source)):
        text = os.fsdecode(source)
        data = read_file(text, max_bytes=kwargs.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES))
        if not data:
            name = portable_name(text)
            raise ImageError(f"{name}: empty file (0 bytes)", reason="empty", source=name)
        return hashlib.sha256(data).hexdigest()
    return load_image(source, **kwargs).sha256


# --------------------------------------------------------------------------- decoding

#: ``(max_pixels, max_aspect_ratio)``
_Limits = tuple[int, float]


def _from_bytes(data: bytes, name: str, limits: _Limits, *, digest: str | None = None) -> LoadedImage:
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)", reason="empty", source=name)
    digest = digest or hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            # PIL warns (then errors) on bombs with its own global cap; we apply ours first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
            _check_size(img.size, name, limits)  # before a single pixel is allocated
            img.load()
            rgb = _to_rgb(img, name)
    except ImageError:
        raise
    except (UnidentifiedImageError, ImportError) as exc:
        raise ImageError(f"{name}: not an image (unrecognized format)", reason="not_an_image", source=name) from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: {exc}", reason="too_large", source=name) from exc
    except MemoryError as exc:
        raise ImageError(f"{name}: decoding ran out of memory", reason="too_large", source=name) from exc
    except Exception as exc:  # noqa: BLE001 - OSError/SyntaxError/EOFError usually; fuzzed files raise anything
        raise ImageError(
            f"{name}: truncated or corrupt image data ({type(exc).__name__}: {exc})"[:300],
            reason="truncated",
            source=name,
        ) from exc
    return LoadedImage(rgb, digest, name)


def _from_pil(img: Image.Image, name: str, limits: _Limits) -> LoadedImage:
    _check_size(img.size, name, limits)
    # Hash pixels + geometry: two different arrays can never share a key.
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return LoadedImage(_to_rgb(img, name), h.hexdigest(), name)


def _check_size(size: tuple[int, int], name: str, limits: _Limits) -> None:
    max_pixels, max_aspect_ratio = limits
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: zero-size image ({w}x{h})", reason="empty", source=name)
    if w * h > max_pixels:
        raise ImageError(
            f"{name}: {w}x{h} = {w * h} pixels exceeds the cap of {max_pixels} "
            "(possible decompression bomb; raise max_pixels if the image is genuine)",
            reason="too_large",
            source=name,
        )
    if max(w, h) > max_aspect_ratio * min(w, h):
        raise ImageError(
            f"{name}: {w}x{h} is {max(w, h) / min(w, h):.0f}:1, beyond the aspect-ratio cap of "
            f"{max_aspect_ratio:g}:1 (resizing its short side would explode the long one; "
            "crop it, or raise max_aspect_ratio)",
            reason="aspect_ratio",
            source=name,
        )


# --------------------------------------------------------------------------- pixels

#: Rows converted per step when scaling high-bit-depth images (bounds temporaries).
_STRIP_ROWS = 256


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(
            f"array of shape {arr.shape} is not an image (expected HxW, HxWx3 or HxWx4)",
            reason="unsupported",
            source="<ndarray>",
        )
    if arr.size == 0:
        raise ImageError(f"zero-size array {arr.shape}", reason="empty", source="<ndarray>")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("float array contains NaN or inf", reason="unsupported", source="<ndarray>")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    else:
        raise ImageError(f"unsupported array dtype {arr.dtype}", reason="unsupported", source="<ndarray>")
    return Image.fromarray(np.ascontiguousarray(arr))


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """Apply EXIF orientation and convert any mode to 8-bit RGB."""
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError):
        pass  # a broken EXIF block should not cost the image itself
    mode = img.mode
    if mode == "RGB":
        return img.copy() if img.readonly else img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of PIL's clipping convert().
        arr = np.asarray(img)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return _scaled_to_rgb(arr, lambda x: np.clip(x / top, 0.0, 1.0) * 255.0 + 0.5)
    if mode == "F":
        arr = np.asarray(img)
        lo, hi = float(arr.min()), float(arr.max())
        return _scaled_to_rgb(arr, lambda x: (x - lo) / (hi - lo if hi > lo else 1.0) * 255.0 + 0.5)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite on white: transparent pixels often hold garbage colours. paste() with the
        # alpha as mask gives alpha_composite's exact pixels without two extra RGBA canvases.
        rgba = img if mode == "RGBA" else img.convert("RGBA")  # convert() would copy an RGBA image
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, (0, 0), rgba)
        return out
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as exc:
        raise ImageError(
            f"{name}: cannot convert mode {mode} to RGB ({exc})", reason="unsupported", source=name
        ) from exc


def _scaled_to_rgb(arr: np.ndarray, scale: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    """``scale`` (float64 in, 0.5-offset 0..255 out) applied a strip of rows at a time, then RGB.

    Strips keep the float64 arithmetic (same pixels as one whole-array pass) without ever
    holding a float64 copy of a large image: 64 MP would need 512 MB per temporary.
    """
    out = np.empty(arr.shape[:2], dtype=np.uint8)
    for top in range(0, arr.shape[0], _STRIP_ROWS):
        out[top : top + _STRIP_ROWS] = scale(arr[top : top + _STRIP_ROWS].astype(np.float64))
    return Image.fromarray(out, "L").convert("RGB")


def ensure_loaded(images: Sequence[ImageSource], **kwargs) -> list[LoadedImage]:
    """Load every source or raise on the first bad one (for single-image APIs)."""
    return [load_image(src, **kwargs) for src in images]
