"""The conditioning probe: how much worse a stage denoises when one word of its caption is wrong.

For a fixed set of rendered clips, the same noise and a few noise levels, the stage's x-error
(mean squared error of its clean-clip estimate) is measured with the true caption and with each
captioned attribute swapped for another value (colour → next colour, shape → next shape, left ↔
right, up ↔ down, still → right, background → next background). A stage that reads an
attribute from the text denoises worse when that word is wrong, so the relative increase (the
gap) is positive; a stage that ignores the word shows a gap of zero. The gaps move within a few
hundred training steps, long before samples show the attribute, which makes the probe the cheap
signal to compare training recipes on (`train.py` logs it every `probe_every` steps).

SR stages are probed the same way on their (condition, target) pairs, with the condition
noised to the stage's sampling augmentation level.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dreamix_jax import cascade
from dreamix_jax.data import shapes_video, synthetic
from dreamix_jax.diffusion import Schedule
from dreamix_jax.diffusion.losses import noisy, x_from_v
from dreamix_jax.models.t5 import Tokenizer, tokenize
from dreamix_jax.models.unet3d import UNet3D

ATTRIBUTES = ("color", "shape", "direction", "background")
TIMES = (0.5, 0.8, 0.95)  # the prompt decides most at high noise
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "right"}


def _next(options: Sequence[str], value: str) -> str:
    options = list(options)
    return options[(options.index(value) + 1) % len(options)]


def swapped(attrs: synthetic.Attributes, attribute: str) -> synthetic.Attributes:
    """The same clip's attributes with one captioned attribute replaced by another value."""
    if attribute == "direction":
        return dataclasses.replace(attrs, direction=_OPPOSITE[attrs.direction])
    options = {"color": synthetic.COLORS, "shape": synthetic.SHAPES, "background": synthetic.BACKGROUNDS}
    if attribute not in options:
        raise ValueError(f"Unknown attribute {attribute!r}; choose one of {ATTRIBUTES}.")
    return dataclasses.replace(attrs, **{attribute: _next(options[attribute], getattr(attrs, attribute))})


def probe_set(count: int = 16, frames: int = 16, size: int = 64) -> tuple[np.ndarray, list[synthetic.Attributes]]:
    """`count` clips of the test split (frames × size × size, in [-1, 1]) and their attributes."""
    attrs = [synthetic.sample_attributes(shapes_video.SPLIT_SEEDS["test"] + i) for i in range(count)]
    return np.stack([synthetic.render(a, frames, size, size) for a in attrs]), attrs


def probe_captions(attrs: Sequence[synthetic.Attributes]) -> list[list[str]]:
    """Caption variants, one list per clip batch: the true captions first, then one per swapped attribute."""
    return [[a.caption() for a in attrs]] + [[swapped(a, name).caption() for a in attrs] for name in ATTRIBUTES]


def probe_tokens(attrs: Sequence[synthetic.Attributes], tokenizer: Tokenizer,
                 max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and masks of every caption variant, (V, B, L)."""
    pairs = [tokenize(tokenizer, captions, max_length) for captions in probe_captions(attrs)]
    return np.stack([ids for ids, _ in pairs]), np.stack([mask for _, mask in pairs])


def x_errors(unet: UNet3D, texts: jax.Array, masks: jax.Array, video: jax.Array, key: jax.Array, *,
             stage: cascade.Stage, schedule: Schedule, times: Sequence[float] = TIMES) -> jax.Array:
    """Mean squared x-error (V, len(times)) of `unet` on `video` (clips at any size, brought to the
    stage's) for each caption variant `texts[v]` (V, B, L, D), with the same noise for every variant."""
    target, cond = cascade.training_pair(video, stage)
    target = target.astype(jnp.float32)
    noise_key, aug_key = jax.random.split(key)
    cond_logsnr = None
    if cond is not None:
        cond, cond_logsnr = cascade.augment_condition(cond, stage.cond_aug, aug_key, schedule)
    batch = target.shape[0]

    def error(args):
        text, mask, t, eps = args
        logsnr = jnp.full((batch,), schedule.logsnr(t))
        alpha, sigma = schedule.alpha_sigma(jnp.full((batch,), t))
        z = noisy(target, eps, alpha, sigma)
        v = unet(z, logsnr, text, mask, cond=cond, cond_logsnr=cond_logsnr)
        return jnp.mean(jnp.square(x_from_v(z, v, alpha, sigma) - target))

    variants, steps = texts.shape[0], len(times)
    eps = jax.random.normal(noise_key, (steps, *target.shape), jnp.float32)
    # One U-Net program, mapped over every (variant, time) pair.
    grid = (jnp.repeat(texts, steps, axis=0), jnp.repeat(masks, steps, axis=0),
            jnp.tile(jnp.asarray(times, jnp.float32), variants), jnp.tile(eps, (variants, 1, 1, 1, 1, 1)))
    return jax.lax.map(error, grid).reshape(variants, steps)


def gaps(errors: np.ndarray, times: Sequence[float] = TIMES) -> dict[str, dict[float, float]]:
    """Relative error increase per swapped attribute and time, from `x_errors`' (V, T) output."""
    errors = np.asarray(errors, np.float64)
    return {name: {float(t): float(errors[i + 1, j] / errors[0, j] - 1.0) for j, t in enumerate(times)}
            for i, name in enumerate(ATTRIBUTES)}


def summary(gap: dict[str, dict[float, float]]) -> dict[str, float]:
    """Flat metrics: `probe/<attribute>` (mean gap over times) and `probe/<attribute>@<t>`."""
    out = {}
    for name, by_time in gap.items():
        out[f"probe/{name}"] = float(np.mean(list(by_time.values())))
        out.update({f"probe/{name}@{t:g}": value for t, value in by_time.items()})
    return out
