"""Draw boxes on an image with Pillow (Ultralytics' own plotting fetches a font)."""

from __future__ import annotations

import colorsys
import hashlib

from PIL import Image, ImageDraw, ImageFont

from experts.evidence import Detections, RegionCaptions


def _colour(label: str) -> tuple[int, int, int]:
    # Stable per label across runs and processes (unlike hash()).
    hue = int(hashlib.md5(label.encode()).hexdigest()[:6], 16) / 0xFFFFFF
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image: Image.Image, evidence: Detections | RegionCaptions, *, width: int | None = None) -> Image.Image:
    """A copy of ``image`` with each box outlined and labelled (label + score, or the region caption)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = width or max(2, round(max(out.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(out.size) / 50)))
    for item in evidence.items:
        if isinstance(evidence, Detections):
            text, key = f"{item.label} {item.score:.2f}", item.label
        else:
            text, key = item.caption, item.label or item.caption
        colour = _colour(key)
        draw.rectangle(item.xyxy, outline=colour, width=width)
        x1, y1 = item.xyxy[0], item.xyxy[1]
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        ty = y1 - (bottom - top) - 4 if y1 - (bottom - top) - 4 >= 0 else y1
        draw.rectangle((x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 4), fill=colour)
        draw.text((x1 + 2, ty + 1), text, fill=(0, 0, 0), font=font)
    return out
