"""The natural-language bridge: expert evidence → compact, faithful text for an LLM.

A planner calls :func:`render` on each tool's result and puts the text in a
ToolMessage. The text follows three rules:

* **Faithful.** Every label and score is copied from the evidence (scores rounded
  to 2 decimals). What the bridge adds is derived arithmetic only: counts per
  label, a coarse position and the share of the image a box covers.
* **Most confident first, deterministic.** Items are sorted by score (descending),
  ties broken by label, then by box, so the same evidence always gives the same
  text.
* **Bounded.** The text fits ``max_tokens``. When items must be dropped, the least
  confident go first and the text says so ("… and 7 more objects (lower
  confidence) omitted."). Tokens are *estimated* as ``ceil(len(text) / 4)`` (the
  usual ~4 characters per token of English BPE vocabularies); pass
  ``count_tokens=lambda s: len(tokenizer.encode(s))`` to use a real tokenizer.

Positions come from the box centre on a 3×3 grid of the image: columns
left / center / right and rows top / middle / bottom, split at 1/3 and 2/3 (a centre
exactly on a split goes to the later cell). Names: ``top-left``, ``top-center``,
``top-right``, ``middle-left``, ``center``, ``middle-right``, ``bottom-left``,
``bottom-center``, ``bottom-right``. Size is the box's share of the image area,
rounded to a whole percent (``<1%`` below one percent); boxes are clipped to the
image first. Pixel boxes are shown only with ``boxes=True``.

>>> from experts import Detection, Detections
>>> dets = Detections((800, 600), (
...     Detection((0, 0, 200, 150), "person", 0.91),
...     Detection((500, 400, 800, 600), "dog", 0.5),
...     Detection((300, 200, 500, 400), "person", 0.876),
... ))
>>> print(render(dets, tool="yolo"))
[yolo] 3 objects detected in the 800×600 image: person ×2, dog ×1.
- person 0.91, top-left, 6% of image
- person 0.88, center, 8% of image
- dog 0.50, bottom-right, 12% of image
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import singledispatch
from typing import Any

from experts import Caption, Classification, Detection, Detections, Features, ItemResult, RegionCaptions
from experts.evidence import Box, evidence_from_dict

__all__ = ["BridgeOptions", "estimate_tokens", "register_renderer", "render"]


def estimate_tokens(text: str) -> int:
    """Rough token count: ~4 characters per token.

    >>> estimate_tokens("a red bus")
    3
    """
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class BridgeOptions:
    """How :func:`render` writes evidence.

    ``max_tokens``: budget for the whole text (``None``: unbounded).
    ``boxes``: add pixel boxes ``[x1, y1, x2, y2]`` (rounded to whole pixels).
    ``tool``: name of the tool that produced the evidence, shown as a ``[tool]`` prefix.
    ``threshold``: the expert's confidence threshold, if known; it is stated in the
    text ("no objects detected above confidence 0.25").
    ``count_tokens``: a real tokenizer's counter; default :func:`estimate_tokens`.
    """

    max_tokens: int | None = 400
    boxes: bool = False
    tool: str | None = None
    threshold: float | None = None
    count_tokens: Callable[[str], int] | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1 (or None), got {self.max_tokens}")

    @property
    def prefix(self) -> str:
        return f"[{self.tool}] " if self.tool else ""

    def fits(self, text: str) -> bool:
        if self.max_tokens is None:
            return True
        return (self.count_tokens or estimate_tokens)(text) <= self.max_tokens


def render(evidence: Any, options: BridgeOptions | None = None, /, **overrides: Any) -> str:
    """Render one piece of evidence as text; keyword arguments override ``options``.

    Accepts :class:`~experts.Detections`, :class:`~experts.RegionCaptions`,
    :class:`~experts.Caption`, :class:`~experts.Classification`,
    :class:`~experts.Features`, an :class:`~experts.ItemResult` (its evidence, or its
    error), or the ``to_dict()`` form of any evidence.

    >>> from experts import Classification
    >>> render(Classification(("bee", "ant"), (0.912, 0.071), "clip-zero-shot"))
    'Top labels (clip-zero-shot): bee 0.91, ant 0.07.'
    >>> labels = ("bee", "ant", "wasp", "fly", "moth", "gnat", "mite")
    >>> many = Classification(labels, (0.6, 0.2, 0.1, 0.04, 0.03, 0.02, 0.01))
    >>> render(many, max_tokens=20)
    'Top labels: bee 0.60, ant 0.20, … and 5 more labels (lower scores) omitted.'
    """
    opts = replace(options or BridgeOptions(), **overrides)
    return _render(evidence, opts)


@singledispatch
def _render(evidence: Any, opts: BridgeOptions) -> str:
    raise TypeError(f"the text bridge cannot render {type(evidence).__name__}; register a renderer for it")


register_renderer = _render.register
"""Add a renderer for a new evidence type: ``@register_renderer(MyType)`` on ``f(ev, opts) -> str``."""


# --------------------------------------------------------------------------- helpers


def _score(value: float) -> str:
    return f"{value:.2f}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _clip(xyxy: Box, size: tuple[int, int]) -> Box:
    w, h = size
    x1, y1, x2, y2 = xyxy
    return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


def _position(xyxy: Box, size: tuple[int, int]) -> str:
    """3×3 grid cell of the box centre, e.g. ``top-left`` or ``center``."""
    w, h = size
    x1, y1, x2, y2 = _clip(xyxy, size)
    col = _COLS[min(2, int(3 * ((x1 + x2) / 2) / w))]
    row = _ROWS[min(2, int(3 * ((y1 + y2) / 2) / h))]
    if row == "middle":
        return "center" if col == "center" else f"middle-{col}"
    return f"{row}-{col}"


def _area_share(xyxy: Box, size: tuple[int, int]) -> str:
    w, h = size
    x1, y1, x2, y2 = _clip(xyxy, size)
    pct = 100.0 * max(0.0, x2 - x1) * max(0.0, y2 - y1) / (w * h)
    return "<1% of image" if pct < 1.0 else f"{round(pct)}% of image"


def _where(xyxy: Box, size: tuple[int, int], boxes: bool) -> str:
    """``, center, 8% of image`` (+ ``, box [x1, y1, x2, y2]``); empty without an image size."""
    parts = []
    if size[0] > 0 and size[1] > 0:
        parts += [_position(xyxy, size), _area_share(xyxy, size)]
    if boxes:
        parts.append("box [" + ", ".join(str(round(v)) for v in xyxy) + "]")
    return "".join(", " + p for p in parts)


def _hard_cut(text: str, opts: BridgeOptions) -> str:
    """Drop whole words from the end until ``text + " …"`` fits (last resort for tiny budgets)."""
    if opts.fits(text):
        return text
    words = text.split(" ")
    for k in range(len(words) - 1, 0, -1):
        cut = " ".join(words[:k]) + " …"
        if opts.fits(cut):
            return cut
    return "…"


def _fit(n: int, compose: Callable[[int], str], fallbacks: list[str], opts: BridgeOptions) -> str:
    """The text with the most items (in order) that fits; ``compose(k)`` writes the first ``k``.

    When not even ``compose(0)`` fits, the first fallback (shorter summaries) that fits is used,
    else the last one cut to the budget.
    """
    full = compose(n)
    if opts.fits(full):
        return full
    best = None
    for k in range(n):
        text = compose(k)
        if not opts.fits(text):
            break
        best = text
    if best is not None:
        return best
    for text in fallbacks:
        if opts.fits(text):
            return text
    return _hard_cut(fallbacks[-1], opts)


def _omitted(k: int, n: int, noun: str, why: str) -> str:
    """The note that ends a truncated text: ``… and 3 more objects (lower confidence) omitted``."""
    if k == 0:
        return f"… all {n} {noun}s omitted to fit the token budget"
    return f"… and {n - k} more {noun if n - k == 1 else noun + 's'} ({why}) omitted"


def _image(size: tuple[int, int]) -> str:
    return f" in the {size[0]}×{size[1]} image" if size[0] > 0 and size[1] > 0 else ""


def _above(opts: BridgeOptions) -> str:
    return "" if opts.threshold is None else f" above confidence {_score(opts.threshold)}"


# --------------------------------------------------------------------------- renderers


def _sorted_detections(items: tuple[Detection, ...]) -> list[Detection]:
    return sorted(items, key=lambda d: (-d.score, d.label, d.xyxy))


@_render.register
def _(evidence: Detections, opts: BridgeOptions) -> str:
    size, n = evidence.image_size, len(evidence.items)
    if n == 0:
        return _hard_cut(f"{opts.prefix}No objects detected{_above(opts)}{_image(size)}.", opts)
    counts = Counter(d.label for d in evidence.items)
    groups = ", ".join(f"{label} ×{c}" for label, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    found = f"{opts.prefix}{_plural(n, 'object')} detected{_above(opts)}{_image(size)}"
    head = f"{found}: {groups}."
    if opts.boxes:
        head += " Boxes are pixel [x1, y1, x2, y2]."
    lines = [
        f"- {d.label} {_score(d.score)}{_where(d.xyxy, size, opts.boxes)}" for d in _sorted_detections(evidence.items)
    ]

    def compose(k: int) -> str:
        note = [] if k == n else [_omitted(k, n, "object", "lower confidence") + "."]
        return "\n".join([head, *lines[:k], *note])

    return _fit(n, compose, [f"{found}: {groups} (details omitted).", f"{found} (details omitted)."], opts)


@_render.register
def _(evidence: RegionCaptions, opts: BridgeOptions) -> str:
    size, n = evidence.image_size, len(evidence.items)
    if n == 0:
        return _hard_cut(f"{opts.prefix}No regions captioned{_above(opts)}{_image(size)}.", opts)
    found = f"{opts.prefix}{_plural(n, 'region')} captioned{_above(opts)}{_image(size)}"
    head = found + (". Boxes are pixel [x1, y1, x2, y2]." if opts.boxes else ".")
    items = sorted(evidence.items, key=lambda r: (-r.score, r.label, r.caption, r.xyxy))
    lines = [
        f"- {r.label + ' ' if r.label else ''}{_score(r.score)}{_where(r.xyxy, size, opts.boxes)}: "
        f'"{" ".join(r.caption.split())}"'
        for r in items
    ]

    def compose(k: int) -> str:
        note = [] if k == n else [_omitted(k, n, "region", "lower confidence") + "."]
        return "\n".join([head, *lines[:k], *note])

    return _fit(n, compose, [f"{found} (details omitted)."], opts)


@_render.register
def _(evidence: Caption, opts: BridgeOptions) -> str:
    text = " ".join(evidence.text.split())
    if not text:
        return _hard_cut(f"{opts.prefix}Caption: (empty).", opts)
    score = "" if evidence.score is None else f" (mean token log-prob {_score(evidence.score)})"
    return _hard_cut(f'{opts.prefix}Caption: "{text}"{score}.', opts)


@_render.register
def _(evidence: Classification, opts: BridgeOptions) -> str:
    head = f"{opts.prefix}Top labels{f' ({evidence.source})' if evidence.source else ''}: "
    pairs = sorted(
        zip(evidence.labels, evidence.scores, range(len(evidence.labels))), key=lambda p: (-p[1], p[0], p[2])
    )
    n = len(pairs)
    if n == 0:
        return _hard_cut(head + "none.", opts)
    parts = [f"{label} {_score(score)}" for label, score, _ in pairs]

    def compose(k: int) -> str:
        note = [] if k == n else [_omitted(k, n, "label", "lower scores")]
        return head + ", ".join([*parts[:k], *note]) + "."

    return _fit(n, compose, [compose(0)], opts)


@_render.register
def _(evidence: Features, opts: BridgeOptions) -> str:
    norm = ", L2-normalized" if evidence.normalized else ""
    patches = "" if evidence.patches is None else f", with {evidence.patches.shape[0]} patch tokens"
    text = f"{opts.prefix}Image features: a {evidence.dim}-dim vector{norm}{patches} (numbers not shown)."
    return _hard_cut(text, opts)


@_render.register
def _(evidence: ItemResult, opts: BridgeOptions) -> str:
    if evidence.error is not None:
        return _hard_cut(f"{opts.prefix}Failed on {evidence.source}: {evidence.error}", opts)
    return _render(evidence.evidence, opts)


@_render.register
def _(evidence: dict, opts: BridgeOptions) -> str:
    return _render(evidence_from_dict(evidence), opts)
