"""Synthetic text–video data: one textured shape moving over a plain background.

Every example is rendered deterministically from its seed. The caption names the colour, shape,
motion and background; the size, the start position (the track) and the texture on the shape
are not in the caption, so an edit that changes the caption's attributes must preserve them
(fidelity). Some (colour, shape) pairs never appear in training, to test compositional edits.

Videos are float32 (T, H, W, 3) in [-1, 1].
"""

import dataclasses

import numpy as np

COLORS = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.15, 0.75),
}
BACKGROUNDS = {
    "gray": (0.50, 0.50, 0.50),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down", "still")
SIZES = {"small": 0.15, "large": 0.23}  # half-extent as a fraction of the frame height
HELD_OUT = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "square")})  # (colour, shape)
TRAVEL = 0.4  # fraction of the frame crossed over a clip
TEXTURE_DEPTH = 0.18  # brightness modulation of the stripes on the shape
RECOLOR_CONTRAST = 0.4  # least RGB distance of a random object colour from the background
# Least margin by which a random colour's nearest palette colour beats the second nearest: nearer
# the boundary, the textured shape's median colour may read as the other name.
RECOLOR_MARGIN = 0.05

_VELOCITY = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}


@dataclasses.dataclass(frozen=True)
class Attributes:
    """Everything that determines a clip: captioned attributes, then the uncaptioned ones."""

    color: str
    shape: str
    direction: str
    background: str
    size: str
    start: tuple[float, float]  # (x, y) of the shape's centre in the first frame, fractions of width/height
    texture: tuple[float, float, float]  # stripe angle (radians), frequency (cycles per size), phase

    @property
    def held_out(self) -> bool:
        return (self.color, self.shape) in HELD_OUT

    def caption(self, video: bool = True) -> str:
        """'a red circle moving left on a gray background' (images and still clips say no motion)."""
        if not video:
            return f"a {self.color} {self.shape} on a {self.background} background"
        motion = "standing still" if self.direction == "still" else f"moving {self.direction}"
        return f"a {self.color} {self.shape} {motion} on a {self.background} background"

    def track(self, frames: int) -> np.ndarray:
        """Centre (x, y) in every frame, (T, 2), fractions of width/height."""
        step = np.array(_VELOCITY[self.direction], np.float64) * TRAVEL / max(frames - 1, 1)
        return np.asarray(self.start) + np.arange(frames)[:, None] * step


def parse_caption(caption: str) -> dict[str, str] | None:
    """The captioned attributes (color, shape, direction, background) of a caption in this
    dataset's grammar, or None for any other text."""
    words = caption.strip().lower().rstrip(".").split()
    if len(words) < 8 or words[0] != "a" or words[-3:-2] != ["a"] or words[-1] != "background":
        return None
    color, shape, motion, background = words[1], words[2], words[3:-4], words[-2]
    direction = {("standing", "still"): "still"}.get(tuple(motion))
    if len(motion) == 2 and motion[0] == "moving" and motion[1] in _VELOCITY and motion[1] != "still":
        direction = motion[1]
    if (color not in COLORS or shape not in SHAPES or background not in BACKGROUNDS or direction is None
            or words[-4:-3] != ["on"]):
        return None
    return dict(color=color, shape=shape, direction=direction, background=background)


def nearest(rgb: np.ndarray, palette: dict[str, tuple[float, float, float]]) -> str:
    """The name of the palette colour closest to `rgb` (Euclidean, in [0, 1] units)."""
    names = list(palette)
    distances = np.linalg.norm(np.asarray([palette[n] for n in names]) - rgb, axis=1)
    return names[int(np.argmin(distances))]


def random_color(attrs: Attributes, rng: np.random.Generator) -> tuple[Attributes, np.ndarray]:
    """A new object colour drawn uniformly from RGB, and the attributes captioned with its nearest palette name.

    Redrawn are colours within RECOLOR_CONTRAST of the background (the shape must stay visible),
    within RECOLOR_MARGIN of a boundary between two palette names (the caption must name what the
    clip shows), and those whose nearest palette name forms a held-out pair with the shape: no
    recoloured clip shows, or is captioned as, a held-out colour–shape pair.
    """
    background = np.asarray(BACKGROUNDS[attrs.background])
    names, palette = list(COLORS), np.asarray(list(COLORS.values()))
    while True:
        rgb = rng.uniform(0.0, 1.0, 3)
        distances = np.linalg.norm(palette - rgb, axis=1)
        first, second = np.argsort(distances)[:2]
        name = names[first]
        if (np.linalg.norm(rgb - background) >= RECOLOR_CONTRAST and (name, attrs.shape) not in HELD_OUT
                and distances[second] - distances[first] >= RECOLOR_MARGIN):
            return dataclasses.replace(attrs, color=name), rgb.astype(np.float32)


def _margin(size: str) -> float:
    """Least distance of a track from the frame's edges: the shape's half-extent and a little more."""
    return SIZES[size] + 0.04


def track_fits(attrs: Attributes, frames: int = 16) -> bool:
    """Whether the whole track keeps the margin every sampled clip keeps: a start that admits its motion."""
    margin, track = _margin(attrs.size), attrs.track(frames)
    return bool(np.all(track >= margin - 1e-9) and np.all(track <= 1.0 - margin + 1e-9))


def sample_attributes(seed: int, *, held_out: bool | None = False) -> Attributes:
    """Attributes drawn from `seed`: held_out=False avoids the held-out pairs, True draws only them, None either."""
    rng = np.random.default_rng(seed)
    while True:
        color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        if held_out is None or ((color, shape) in HELD_OUT) == held_out:
            break
    direction, background = str(rng.choice(DIRECTIONS)), str(rng.choice(list(BACKGROUNDS)))
    size = str(rng.choice(list(SIZES)))
    # Keep the whole track inside the frame, with a margin of the shape's size.
    margin = _margin(size)
    dx, dy = _VELOCITY[direction]
    lo = [margin + (TRAVEL if d < 0 else 0.0) for d in (dx, dy)]
    hi = [1.0 - margin - (TRAVEL if d > 0 else 0.0) for d in (dx, dy)]
    start = tuple(float(rng.uniform(a, b)) for a, b in zip(lo, hi, strict=True))
    texture = (float(rng.uniform(0, np.pi)), float(rng.uniform(1.0, 2.5)), float(rng.uniform(0, 2 * np.pi)))
    return Attributes(color, shape, direction, background, size, start, texture)


def _signed_distance(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Distance to the shape's edge (negative inside), for offsets (x, y) from its centre."""
    if shape == "circle":
        return np.hypot(x, y) - r
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) - 0.85 * r
    if shape == "triangle":  # pointing up, centred on its centroid
        k = np.sqrt(3.0)
        edges = [y - 0.5 * r, (-k * x - y - r) / 2.0, (k * x - y - r) / 2.0]
        return np.maximum.reduce(edges)
    raise ValueError(f"Unknown shape {shape!r}; choose one of {SHAPES}.")


def coverage(shape: str, x: np.ndarray, y: np.ndarray, r: float | np.ndarray, height: int) -> np.ndarray:
    """Share of each pixel the shape covers (antialiased over one pixel), for offsets (x, y) from its centre."""
    return np.clip(0.5 - _signed_distance(shape, x, y, r) * height, 0.0, 1.0)


def render(attrs: Attributes, frames: int, height: int, width: int, rgb: np.ndarray | None = None) -> np.ndarray:
    """The clip (frames, height, width, 3) in [-1, 1]; frames=1 gives an image at the start position.

    `rgb` paints the shape in that colour instead of its named one (`random_color`).
    """
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    r = SIZES[attrs.size]
    angle, freq, phase = attrs.texture
    background = np.asarray(BACKGROUNDS[attrs.background], np.float32)
    color = np.asarray(COLORS[attrs.color] if rgb is None else rgb, np.float32)
    out = np.empty((frames, height, width, 3), np.float32)
    for t, (cx, cy) in enumerate(attrs.track(frames)):
        # Offsets in units of frame height, so shapes are not stretched on wide frames.
        x, y = (gx - cx) * width / height, gy - cy
        inside = coverage(attrs.shape, x, y, r, height)[..., None]
        # Stripes move with the shape: texture is part of what an edit must keep.
        u = (x * np.cos(angle) + y * np.sin(angle)) / r
        shade = 1.0 + TEXTURE_DEPTH * np.sin(2 * np.pi * freq * u + phase)[..., None]
        out[t] = inside * np.clip(color * shade, 0.0, 1.0) + (1.0 - inside) * background
    return out * 2.0 - 1.0
