"""Scoring edits without people: an attribute detector for synthetic-shape clips, and model-free measures.

`detect` reads colour, shape, motion direction, background, size and track back from any clip of
one shape on a plain background (a rendered one, or one a model made). It uses no learned
weights: the background is the median border colour, the shape is whatever differs from it, and
the attributes are measured on it. The shape and its size are read by fitting a render of each
shape, blurred, so a stage's output enlarged from 16 × 16 reads as a sharp one does.
`edit_scores` turns detections into an edit's alignment (the prompt's attributes are there) and
fidelity (what the prompt does not name, size and start position, is kept). `psnr`, `ssim` and
`frame_consistency` need no detector and score edits of any video.
"""

import dataclasses
import functools

import numpy as np

from dreamix_jax.data import synthetic

# Gaussian blurs (σ in pixels) a shape's render is fitted under: from a sharp 64 × 64 render to a
# 16 × 16 one enlarged four times (about 2.3 pixels). A bounding-box fill threshold cannot tell
# shapes apart there: enlarged from 16 × 16, true triangles fill 0.62-0.77 of their box, circles 0.75-0.83.
FIT_BLURS = (0.0, 1.0, 2.0, 3.0, 4.0)
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
    fill: float  # median share of its bounding box the mask covers (corners show here; shape is fitted)


def detect(video: np.ndarray) -> Detection:
    """Attributes of a clip (T, H, W, 3) in [-1, 1]."""
    video = (np.asarray(video, np.float32) + 1.0) / 2.0
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"Expected a clip (T, H, W, 3), got shape {video.shape}.")
    frames, height, width, _ = video.shape
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1).reshape(-1, 3)
    background_rgb = np.median(border, axis=0)
    distance = np.linalg.norm(video - background_rgb, axis=-1)
    mask = distance > MASK_DISTANCE
    color_rgb = background_rgb
    if mask.any():  # the half of the mask farthest from the background: a blurred small shape is mostly edge
        color_rgb = np.median(video[mask & (distance >= np.median(distance[mask]))], axis=0)

    # Shape weights: 0 at the background, 1 at the shape's colour (the stripes give or take a little).
    span = color_rgb - background_rgb
    weights = np.clip((video - background_rgb) @ span / max(float(span @ span), 1e-6), 0.0, 1.0)

    centres, fills, found = [], [], []
    for t, frame in enumerate(mask):
        ys, xs = np.nonzero(frame)
        if len(xs) < 2:
            continue
        centres.append(((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height))
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        fills.append(len(xs) / box)
        found.append(t)
    if not centres:
        return Detection("none", "none", "none", synthetic.nearest(background_rgb, synthetic.BACKGROUNDS), "none",
                         (float("nan"), float("nan")), 0.0, 0.0, 0.0)

    shape, radius = _fit_shape(weights[found])
    displacement = np.asarray(centres[-1]) - np.asarray(centres[0])
    axis = int(np.argmax(np.abs(displacement)))
    if np.abs(displacement[axis]) < STILL_FRACTION * synthetic.TRAVEL:
        direction = "still"
    else:
        direction = (("left", "right"), ("up", "down"))[axis][int(displacement[axis] > 0)]
    size = min(synthetic.SIZES, key=lambda name: abs(synthetic.SIZES[name] - radius))
    return Detection(
        color=synthetic.nearest(color_rgb, synthetic.COLORS), shape=shape, direction=direction,
        background=synthetic.nearest(background_rgb, synthetic.BACKGROUNDS), size=size,
        start=(float(centres[0][0]), float(centres[0][1])), radius=radius, coverage=len(centres) / frames,
        fill=float(np.median(fills)))


def _fit_shape(weights: np.ndarray) -> tuple[str, float]:
    """The shape whose render best matches the weights (T, H, W), and its half-extent (fraction of the height).

    Each shape is rendered at every frame's weighted centroid with the weights' area (blur keeps
    both), blurred by each of FIT_BLURS; the least squared difference over the clip names it.
    """
    _, height, width = weights.shape
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    mass = np.maximum(weights.sum(axis=(1, 2)), 1e-6)
    cy, cx = weights.sum(axis=2) @ ys / mass, weights.sum(axis=1) @ xs / mass
    x, y = np.broadcast_arrays((xs[None, None, :] - cx[:, None, None]) * width / height,
                               ys[None, :, None] - cy[:, None, None])
    errors, radii = {}, {}
    for shape in synthetic.SHAPES:
        r = np.sqrt(mass / height**2 / _AREA[shape])[:, None, None]
        render = synthetic.coverage(shape, x, y, r, height).astype(np.float32)
        errors[shape] = min(float(((_gaussian(height, s) @ render @ _gaussian(width, s).T - weights) ** 2).sum())
                            for s in FIT_BLURS)
        radii[shape] = float(np.median(r))
    shape = min(errors, key=errors.get)
    return shape, radii[shape]


@functools.cache
def _gaussian(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of a Gaussian blur by σ pixels along one axis, rows renormalised at the edges."""
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
    taps = np.exp(-0.5 * (offsets / sigma) ** 2) if sigma else (offsets == 0).astype(np.float64)
    return (taps / taps.sum(axis=1, keepdims=True)).astype(np.float32)


def attribute_accuracy(detections: list[Detection], truths: list[synthetic.Attributes]) -> dict[str, float]:
    """Fraction of clips whose detected colour, shape, direction, background and size match the truth."""
    names = ("color", "shape", "direction", "background", "size")
    return {n: float(np.mean([getattr(d, n) == getattr(t, n) for d, t in zip(detections, truths, strict=True)]))
            for n in names}


# ------------------------------------------------------------------------------------------------
# Edits: alignment and fidelity (synthetic domain), and model-free measures (any video).
# ------------------------------------------------------------------------------------------------

START_TOLERANCE = 0.1  # a start position within this fraction of the frame counts as kept


def start_kept(found: Detection, original: Detection | synthetic.Attributes) -> bool:
    """Whether the shape starts where it did in the original, within START_TOLERANCE."""
    return bool(np.all(np.abs(np.asarray(found.start) - np.asarray(original.start)) <= START_TOLERANCE))


def edit_scores(output: np.ndarray, source: np.ndarray, prompt: str) -> dict[str, float] | None:
    """Alignment (share of the prompt's four attributes the output shows) and fidelity (share of size
    and start position kept from the source) of one edit; None when the prompt is not a caption."""
    wanted = synthetic.parse_caption(prompt)
    if wanted is None:
        return None
    found, original = detect(output), detect(source)
    alignment = np.mean([getattr(found, name) == value for name, value in wanted.items()])
    fidelity = np.mean([found.size == original.size, start_kept(found, original)])
    return dict(alignment=float(alignment), fidelity=float(fidelity))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB of two clips in [-1, 1] (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def _blur(x: np.ndarray, sigma: float = 1.5, radius: int = 3) -> np.ndarray:
    """Gaussian blur over the two axes before the last of (..., H, W, C), edges reflected."""
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (-3, -2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        x = sum(w * np.take(padded, range(i, i + x.shape[axis]), axis=axis) for i, w in enumerate(taps))
    return x


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    """Mean structural similarity (Gaussian window σ = 1.5, per channel) of two images or clips (..., H, W, C)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _blur(a), _blur(b)
    var_a, var_b = _blur(a * a) - mu_a**2, _blur(b * b) - mu_b**2
    cov = _blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def frame_consistency(clip: np.ndarray) -> float:
    """Mean SSIM of consecutive frames of a clip (T, H, W, C): 1 for a still clip, low for flicker."""
    clip = np.asarray(clip)
    if clip.shape[0] < 2:
        return 1.0
    return ssim(clip[:-1], clip[1:])
