"""Content hashes of image sources, each local file read and hashed once per run.

A warm feature store answers from keys alone, so hashing is the whole cost of a hit, and
a few-shot fit asks for every support image once per expert and augmented view.
:class:`FileHashes` remembers each file's hash under its path, size, mtime and inode (a
rewrite or a swapped-in file changes one of them) and hands back what it read, so a
store miss is decoded from those bytes instead of reading the file again.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "a.png"
>>> _ = path.write_bytes(b"png bytes")
>>> hashes = FileHashes()
>>> first, again = hashes.hash(str(path)), hashes.hash(str(path))
>>> first.sha256 == again.sha256, type(first.input).__name__, again.input == str(path)
(True, 'EncodedImage', True)
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from experts.errors import ImageError
from experts.images import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_PIXELS,
    EncodedImage,
    ImageSource,
    LoadedImage,
    load_image,
)
from experts.sources import DEFAULT_MAX_FILE_BYTES, is_url, local_path, portable_name, read_file

__all__ = ["FileHashes", "Hashed"]

#: files remembered at most (an entry is ~200 bytes; a dataset of this many images is hashed once)
DEFAULT_MAX_ENTRIES = 200_000


@dataclass(frozen=True, eq=False)
class Hashed:
    """A source's content hash, and what to give an expert if its features must be computed.

    ``input`` is the bytes just read (:class:`~experts.images.EncodedImage`), the decoded
    image when hashing had to decode (in-memory images, URLs), or the source itself when
    the hash was remembered (nothing was read: a miss reads it once, to decode it).
    """

    sha256: str
    input: ImageSource


class FileHashes:
    """A bounded, thread-safe memo of file hashes keyed by ``(path, size, mtime, inode)``.

    Keep one for one run (a fit, a question, a batch chunk): what it remembers is only
    as fresh as the file's metadata, which a rewrite within one mtime tick, keeping the
    size and the inode, would not change.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._memo: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._memo)

    def clear(self) -> None:
        with self._lock:
            self._memo.clear()

    def hash(
        self,
        source: ImageSource,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        allow_urls: bool = False,
        **load_kwargs: Any,
    ) -> Hashed:
        """The hash ``load_image(source).sha256`` would give (raises :class:`ImageError` like it).

        Takes an expert's ``intake_limits``. Files and bytes are hashed without decoding.
        """
        if isinstance(source, (LoadedImage, EncodedImage)):
            return Hashed(source.sha256, source)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if not data:
                raise ImageError("<bytes>: empty file (0 bytes)", reason="empty", source="<bytes>")
            sha = hashlib.sha256(data).hexdigest()
            return Hashed(sha, EncodedImage(data, sha, "<bytes>"))
        if isinstance(source, (str, os.PathLike)) and not is_url(os.fsdecode(source)):
            return self._file(os.fsdecode(source), max_file_bytes)
        # In-memory images and URLs are decoded to be hashed: hand the decoded image on.
        image = load_image(
            source,
            max_pixels=max_pixels,
            max_aspect_ratio=max_aspect_ratio,
            max_file_bytes=max_file_bytes,
            allow_urls=allow_urls,
            **load_kwargs,
        )
        return Hashed(image.sha256, image)

    def _file(self, text: str, max_file_bytes: int) -> Hashed:
        key = _stat_key(text)
        # A file over this caller's cap is read (and refused) by read_file, whatever was remembered.
        if key is not None and key[1] <= max_file_bytes:
            with self._lock:
                sha = self._memo.get(key)
                if sha is not None:
                    self._memo.move_to_end(key)
                    return Hashed(sha, text)
        data = read_file(text, max_bytes=max_file_bytes)
        name = portable_name(text)
        if not data:
            raise ImageError(f"{name}: empty file (0 bytes)", reason="empty", source=name)
        sha = hashlib.sha256(data).hexdigest()
        # Remember it only if the file did not change while we read it.
        if key is not None and key == _stat_key(text):
            with self._lock:
                self._memo[key] = sha
                self._memo.move_to_end(key)
                while len(self._memo) > self.max_entries:
                    self._memo.popitem(last=False)
        return Hashed(sha, EncodedImage(data, sha, name))


def _stat_key(text: str) -> tuple | None:
    """``(path, size, mtime_ns, inode, device)``, or None when it cannot be stat'ed (read_file will say why)."""
    try:
        st = os.stat(local_path(text))
    except (OSError, ValueError, ImageError):
        return None
    return (text, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
