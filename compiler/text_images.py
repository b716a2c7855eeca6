"""Rendered text images: verification inputs a text detector responds to.

A DBNet-style detector answers "where is text"; on smooth noise a trained one says
"nowhere" everywhere (the real PP-OCRv4 detector puts every probability below 1e-5), and a
check of such an output cannot fail (segc.metrics.no_signal). So for a recipe whose task is
``text_detection`` the seeded inputs are pages: a light, textured background with dark
words in PIL's default font (``ImageFont.load_default(size=...)``, a bundled FreeType font
in Pillow >= 10.1, so nothing is downloaded) at several sizes and angles. Seeded, and
cheap: a few dozen draw calls per image.
"""

from __future__ import annotations

import numpy as np

LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789"


def text_pixels(
    rng: np.random.Generator, shape: tuple[int, int, int, int], background: np.ndarray | None = None
) -> np.ndarray:
    """An NCHW float32 array of RGB pixels in [0, 255]: words on a light page.

    ``background`` (NCHW in [0, 255], e.g. ``smooth_pixels``) gives the page its texture;
    it is compressed into [170, 255] so that the words stay the darkest thing on it.
    """
    from PIL import Image, ImageDraw, ImageFont

    n, c, h, w = shape
    out = np.empty((n, 3, h, w), np.float32)
    for b in range(n):
        if background is not None:
            page = (170.0 + background[b, :3] * (85.0 / 255.0)).astype(np.float32, copy=False)
        else:
            page = np.full((3, h, w), 235.0, np.float32) + rng.normal(0, 6, (3, h, w)).astype(np.float32)
        img = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8).transpose(1, 2, 0), "RGB")
        words = max(8, (h * w) // 25000)  # a page with room between the lines
        for _ in range(words):
            size = int(rng.integers(max(8, h // 50), max(12, h // 14) + 1))
            font = ImageFont.load_default(size=size)
            text = "".join(rng.choice(list(LETTERS), size=int(rng.integers(3, 10))))
            ink = tuple(int(v) for v in rng.integers(0, 80, size=3))
            left, top, right, bottom = (int(v) for v in font.getbbox(text))
            tile = Image.new("L", (right - left + 4, bottom - top + 4), 0)
            ImageDraw.Draw(tile).text((2 - left, 2 - top), text, fill=255, font=font)
            angle = float(rng.choice([0.0, 0.0, rng.uniform(-30, 30), 90.0]))
            tile = tile.rotate(angle, expand=True, resample=Image.Resampling.BILINEAR)
            x = int(rng.integers(0, max(1, w - tile.width // 2)))
            y = int(rng.integers(0, max(1, h - tile.height // 2)))
            img.paste(Image.new("RGB", tile.size, ink), (x, y), tile)
        out[b] = np.asarray(img, np.float32).transpose(2, 0, 1)
    return out
