"""The demo model's synthetic world: one coloured shape on a plain background.

Everything the demo model knows comes from here: the palette, the shapes, how a scene is drawn
(`render`), and how a picture is read back from its pixels (`classify`). The classifier is what the
evaluation uses to check generated images, so it must agree with the renderer (a test checks it).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Saturated, well-separated colours: a VQGAN keeps them exact and nearest-colour lookup is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (245, 220, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
COLOURS = list(PALETTE)
SHAPES = ["circle", "square", "triangle"]

# Fill ratio of each shape inside its own bounding box: the pixel classifier's only shape cue.
FILL_RATIO = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}
MIN_SPAN, MAX_SPAN = 0.3, 0.7  # bounding box side as a fraction of the image side
PLACES = [["at the top left", "at the top", "at the top right"],
          ["on the left", "in the middle", "on the right"],
          ["at the bottom left", "at the bottom", "at the bottom right"]]


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    x: float = 0.5  # bounding-box centre, fraction of the image side
    y: float = 0.5
    size: float = 0.5  # bounding-box side, fraction of the image side

    def describe(self) -> str:
        return f"{self.colour} {self.shape} on a {self.background} background"

    @property
    def size_word(self) -> str:
        """small / medium / large: thirds of the size range."""
        t = (self.size - MIN_SPAN) / (MAX_SPAN - MIN_SPAN)
        return "small" if t < 1 / 3 else "medium" if t < 2 / 3 else "large"

    @property
    def where(self) -> str:
        """Where the box sits among the places it can be, in a 3x3 grid: 'at the top left', 'in the middle'..."""
        free = max(1e-9, 1 - self.size)
        col = min(2, int(3 * (self.x - self.size / 2) / free))
        row = min(2, int(3 * (self.y - self.size / 2) / free))
        return PLACES[row][col]


def random_scene(rng: random.Random, shape=None, colour=None, background=None) -> Scene:
    """A scene with the given attributes (random where None) at a random size and position."""
    shape = shape or rng.choice(SHAPES)
    colour = colour or rng.choice([c for c in COLOURS if c != background])
    background = background or rng.choice([c for c in COLOURS if c != colour])
    size = rng.uniform(MIN_SPAN, MAX_SPAN)
    # the whole bounding box stays inside the image
    x = rng.uniform(size / 2, 1 - size / 2)
    y = rng.uniform(size / 2, 1 - size / 2)
    return Scene(shape, colour, background, x, y, size)


def render(scene: Scene, resolution: int = 64) -> Image.Image:
    """Draws the scene without antialiasing: every pixel is exactly one palette colour."""
    img = Image.new("RGB", (resolution, resolution), PALETTE[scene.background])
    draw = ImageDraw.Draw(img)
    side = scene.size * resolution
    x0 = round(scene.x * resolution - side / 2)
    y0 = round(scene.y * resolution - side / 2)
    s = round(side)
    x0, y0 = min(max(x0, 0), resolution - s), min(max(y0, 0), resolution - s)
    x1, y1 = x0 + s - 1, y0 + s - 1  # PIL boxes include their last pixel
    fill = PALETTE[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "triangle":  # pointing up: apex at the top centre, base along the bottom
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return img


_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # [8, 3]


def nearest_colours(pixels: np.ndarray) -> np.ndarray:
    """[..., 3] RGB -> [...] index into COLOURS of the nearest palette colour."""
    d = ((pixels[..., None, :].astype(np.float32) - _PALETTE_ARRAY) ** 2).sum(-1)
    return d.argmin(-1)


@dataclass
class Reading:
    """What `classify` sees in a picture."""

    shape: str
    colour: str
    background: str
    fill_ratio: float


def classify(image: Image.Image) -> Reading:
    """Reads shape, shape colour and background colour from pixels alone.

    background = the most common palette colour on the border; shape colour = the most common
    palette colour among the other pixels; shape = from the shape-coloured pixels inside their bounding
    box: a triangle fills its lower half far more than its upper half, else the fill ratio tells a
    square (~1.0) from a circle (~0.79).
    """
    idx = nearest_colours(np.asarray(image.convert("RGB")))
    border = np.concatenate([idx[:2].ravel(), idx[-2:].ravel(), idx[:, :2].ravel(), idx[:, -2:].ravel()])
    bg = int(np.bincount(border, minlength=len(COLOURS)).argmax())
    inner = idx[idx != bg]
    if inner.size == 0:
        return Reading("none", "none", COLOURS[bg], 0.0)
    fg = int(np.bincount(inner, minlength=len(COLOURS)).argmax())
    mask = idx == fg
    # Rows/columns with a single stray pixel (decoder noise at a far edge) do not stretch the box.
    rows = np.nonzero(mask.sum(1) >= 2)[0]
    cols = np.nonzero(mask.sum(0) >= 2)[0]
    if rows.size == 0 or cols.size == 0:
        return Reading("none", COLOURS[fg], COLOURS[bg], 0.0)
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    ratio = float(box.mean())
    # An up-pointing triangle is much fuller in its lower half; circles and squares are symmetric.
    # (Fill ratio alone is ambiguous for small pixelated triangles, which are fuller than the ideal 0.5.)
    half = box.shape[0] // 2
    lopsided = float(box[box.shape[0] - half :].mean() - box[:half].mean()) if half else 0.0
    shape = "triangle" if lopsided > 0.25 else "square" if ratio > 0.89 else "circle"
    return Reading(shape, COLOURS[fg], COLOURS[bg], ratio)
