"""Scoring edits without people: an attribute detector for synthetic-shape clips.

`detect` reads colour, shape, motion direction, background, size and track back from any clip of
one shape on a plain background (a rendered one, or one a model made). It uses no learned
weights: the background is the median border colour, the shape is whatever differs from it, and
the attributes are measured on that mask.
"""

import dataclasses

import numpy as np

from dreamix_jax.data import synthetic

MASK_DISTANCE = 0.25  # RGB distance (in [0, 1] units) from the background that counts as shape
STILL_FRACTION = 1 / 3  # a displacement under this fraction of the travel reads as standing still
# Area of each shape in units of its half-extent squared (see synthetic._signed_distance).
_AREA = {"circle": np.pi, "square": (2 * 0.85) ** 2, "triangle": 3 * np.sqrt(3) / 4}


@dataclasses.dataclass(frozen=True)
class Detection:
    """What a clip shows; the first four are the caption's attributes."""

    color: str
    shape: str
    direction: str
    background: str
    size: str
    start: tuple[float, float]  # centre in the first frame, fractions of width/height
    radius: float  # half-extent, fraction of the frame height
    coverage: float  # fraction of frames in which a shape was found


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[float, float, float]]) -> str:
    names = list(palette)
    distances = np.linalg.norm(np.asarray([palette[n] for n in names]) - rgb, axis=1)
    return names[int(np.argmin(distances))]


def detect(video: np.ndarray) -> Detection:
    """Attributes of a clip (T, H, W, 3) in [-1, 1]."""
    video = (np.asarray(video, np.float32) + 1.0) / 2.0
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"Expected a clip (T, H, W, 3), got shape {video.shape}.")
    frames, height, width, _ = video.shape
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1).reshape(-1, 3)
    background_rgb = np.median(border, axis=0)
    mask = np.linalg.norm(video - background_rgb, axis=-1) > MASK_DISTANCE
    color_rgb = np.median(video[mask], axis=0) if mask.any() else background_rgb

    centres, fills, areas = [], [], []
    for frame in mask:
        ys, xs = np.nonzero(frame)
        if len(xs) < 2:
            continue
        centres.append(((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height))
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        fills.append(len(xs) / box)
        areas.append(len(xs) / height**2)
    if not centres:
        return Detection("none", "none", "none", _nearest(background_rgb, synthetic.BACKGROUNDS), "none",
                         (float("nan"), float("nan")), 0.0, 0.0)

    fill = float(np.median(fills))
    shape = "triangle" if fill < 0.64 else "circle" if fill < 0.9 else "square"
    displacement = np.asarray(centres[-1]) - np.asarray(centres[0])
    axis = int(np.argmax(np.abs(displacement)))
    if np.abs(displacement[axis]) < STILL_FRACTION * synthetic.TRAVEL:
        direction = "still"
    else:
        direction = (("left", "right"), ("up", "down"))[axis][int(displacement[axis] > 0)]
    radius = float(np.sqrt(np.median(areas) / _AREA[shape]))
    size = min(synthetic.SIZES, key=lambda name: abs(synthetic.SIZES[name] - radius))
    return Detection(
        color=_nearest(color_rgb, synthetic.COLORS), shape=shape, direction=direction,
        background=_nearest(background_rgb, synthetic.BACKGROUNDS), size=size,
        start=(float(centres[0][0]), float(centres[0][1])), radius=radius, coverage=len(centres) / frames)


def attribute_accuracy(detections: list[Detection], truths: list[synthetic.Attributes]) -> dict[str, float]:
    """Fraction of clips whose detected colour, shape, direction, background and size match the truth."""
    names = ("color", "shape", "direction", "background", "size")
    return {n: float(np.mean([getattr(d, n) == getattr(t, n) for d, t in zip(detections, truths, strict=True)]))
            for n in names}
