"""Small inline pictures for HTML reports: an image file → a ``data:`` URI of a PNG thumbnail.

>>> thumbnail_uri("missing.png")
''
"""

from __future__ import annotations

import base64
import io


def thumbnail_uri(path: str, size: int = 96) -> str:
    """A PNG thumbnail of ``path`` (at most ``size`` px a side) as a data URI; ``""`` if it can't be read,
    so a report row about an unreadable image is still written, without its picture."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB")
            small.thumbnail((size, size))
            buffer = io.BytesIO()
            small.save(buffer, format="PNG")
    except Exception:  # noqa: BLE001 - any decode failure means "no picture", never a lost report
        return ""
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
