"""Image intake: anything a user hands us → a validated RGB image + a content hash.

Accepted sources: a filesystem path, raw encoded bytes, a ``PIL.Image``, a numpy
array (``HxW``, ``HxWx3``, ``HxWx4``; uint8, uint16 or float in ``[0, 1]``), and an
``http(s)://`` URL only when the caller opts in with ``allow_urls=True``.

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
import urllib.request
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from experts.errors import ImageError

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
#: URL downloads are capped too, so an opted-in URL cannot exhaust memory.
DEFAULT_MAX_URL_BYTES = 50_000_000

ImageSource = Union[str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray, "LoadedImage"]


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded, orientation-corrected RGB image and where it came from."""

    image: Image.Image
    sha256: str
    source: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_urls: bool = False,
    url_timeout: float = 10.0,
) -> LoadedImage:
    """Decode ``source`` into a :class:`LoadedImage` or raise :class:`ImageError`."""
    if isinstance(source, LoadedImage):
        return source
    if isinstance(source, Image.Image):
        return _from_pil(source, "<PIL.Image>", max_pixels)
    if isinstance(source, np.ndarray):
        return _from_pil(_array_to_pil(source), "<ndarray>", max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), "<bytes>", max_pixels)
    if isinstance(source, (str, Path)):
        text = str(source)
        if text.startswith(("http://", "https://")):
            if not allow_urls:
                raise ImageError(
                    f"{text}: URLs are not fetched unless you opt in: "
                    "EXPERTBRIDGE_ALLOW_URLS=1 (allow_urls=True in Python)",
                    reason="url_disabled",
                    source=text,
                )
            return _from_bytes(_fetch(text, url_timeout), text, max_pixels)
        return _from_bytes(_read_file(Path(text)), text, max_pixels)
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
    if isinstance(source, LoadedImage):
        return source.source
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{type(source).__name__}>"


def sha256_file(path: str | Path) -> str:
    """Content hash of a file on disk, identical to ``load_image(path).sha256``."""
    return hashlib.sha256(_read_file(Path(path))).hexdigest()


def content_sha256(source: ImageSource, **kwargs) -> str:
    """The content hash ``load_image(source).sha256`` would give, without decoding when possible.

    Files and bytes are only hashed (fast: this is what makes a warm feature
    store cheap); in-memory images and URLs are loaded. Raises :class:`ImageError`.
    """
    if isinstance(source, LoadedImage):
        return source.sha256
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise ImageError("<bytes>: empty file (0 bytes)", reason="empty", source="<bytes>")
        return hashlib.sha256(bytes(source)).hexdigest()
    if isinstance(source, (str, Path)) and not str(source).startswith(("http://", "https://")):
        data = _read_file(Path(source))
        if not data:
            raise ImageError(f"{source}: empty file (0 bytes)", reason="empty", source=str(source))
        return hashlib.sha256(data).hexdigest()
    return load_image(source, **kwargs).sha256


# --------------------------------------------------------------------------- sources


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise ImageError(f"{path}: no such file", reason="missing", source=str(path))
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file", reason="not_an_image", source=str(path))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror})", reason="missing", source=str(path)) from exc


def _fetch(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - opt-in only
            data = resp.read(DEFAULT_MAX_URL_BYTES + 1)
    except OSError as exc:
        raise ImageError(f"{url}: download failed ({exc})", reason="fetch_failed", source=url) from exc
    if len(data) > DEFAULT_MAX_URL_BYTES:
        raise ImageError(f"{url}: larger than {DEFAULT_MAX_URL_BYTES} bytes", reason="too_large", source=url)
    return data


def _from_bytes(data: bytes, name: str, max_pixels: int) -> LoadedImage:
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)", reason="empty", source=name)
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            # PIL warns (then errors) on bombs with its own global cap; we apply ours first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img.size, name, max_pixels)
            img.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, ImportError) as exc:
        raise ImageError(f"{name}: not an image (unrecognized format)", reason="not_an_image", source=name) from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: {exc}", reason="too_large", source=name) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: truncated or corrupt image data ({exc})", reason="truncated", source=name) from exc
    return LoadedImage(_to_rgb(img, name), digest, name)


def _from_pil(img: Image.Image, name: str, max_pixels: int) -> LoadedImage:
    _check_size(img.size, name, max_pixels)
    # Hash pixels + geometry: two different arrays can never share a key.
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return LoadedImage(_to_rgb(img, name), h.hexdigest(), name)


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
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


# --------------------------------------------------------------------------- pixels


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
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr8 = (np.clip(arr / top, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr8 = ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite on white: transparent pixels often hold garbage colours.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as exc:
        raise ImageError(
            f"{name}: cannot convert mode {mode} to RGB ({exc})", reason="unsupported", source=name
        ) from exc


def ensure_loaded(images: Sequence[ImageSource], **kwargs) -> list[LoadedImage]:
    """Load every source or raise on the first bad one (for single-image APIs)."""
    return [load_image(src, **kwargs) for src in images]
