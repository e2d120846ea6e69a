"""The conditioning probe: a denoiser that reads the caption shows a gap for every attribute, one that
ignores it shows none; the caption swaps change exactly one attribute."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax import cascade, probe
from dreamix_jax.data import synthetic
from dreamix_jax.diffusion import Schedule
from dreamix_jax.diffusion.losses import v_from_x

STAGE = cascade.Stage(name="base", kind="base", frames=8, height=16, width=16, fps=4, in_frames=8, in_height=16,
                      in_width=16, in_fps=4, unet={})


@dataclasses.dataclass
class Oracle:
    """Estimates the clean clip as a blend of the noisy input and the clip its caption describes, which
    arrives rendered in the text embedding (B, 1, T·H·W·3); `trust` is how much it relies on the text."""

    trust: float
    schedule: Schedule = Schedule()

    def __call__(self, z, logsnr, text, mask, *, cond=None, cond_logsnr=None):
        alpha, sigma = jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))
        described = text.reshape(z.shape)
        x = self.trust * described + (1 - self.trust) * alpha[:, None, None, None, None] * z
        return v_from_x(z, x, alpha, sigma)


def _rendered_captions(attrs):
    """Each caption variant's clip at the stage's size, as (V, B, 1, D) 'text embeddings'."""
    variants = [list(attrs)] + [[probe.swapped(a, name) for a in attrs] for name in probe.ATTRIBUTES]
    clips = [np.stack([synthetic.render(a, STAGE.frames, STAGE.height, STAGE.width) for a in row]) for row in variants]
    return np.stack([c.reshape(len(attrs), 1, -1) for c in clips])


def test_a_denoiser_that_reads_the_caption_shows_a_gap_and_one_that_ignores_it_shows_none():
    video, attrs = probe.probe_set(8)
    texts = _rendered_captions(attrs)
    masks = np.ones(texts.shape[:3], bool)
    run = jax.jit(lambda trust, texts: probe.x_errors(Oracle(trust), texts, masks, video, jax.random.key(0),
                                                       stage=STAGE, schedule=Schedule()), static_argnums=0)
    reading = probe.gaps(np.asarray(run(0.5, texts)))
    ignoring = probe.gaps(np.asarray(run(0.0, texts)))
    for name in probe.ATTRIBUTES:
        for t in probe.TIMES:
            assert reading[name][t] > 0.05, (name, t, reading)  # every swapped word costs the oracle
            assert ignoring[name][t] == 0.0  # same noise, same output: no gap at all
    flat = probe.summary(reading)
    assert set(flat) == {f"probe/{a}" for a in probe.ATTRIBUTES} | {
        f"probe/{a}@{t:g}" for a in probe.ATTRIBUTES for t in probe.TIMES}
    np.testing.assert_allclose(flat["probe/shape"], np.mean(list(reading["shape"].values())))


@pytest.mark.parametrize("attribute", probe.ATTRIBUTES)
def test_a_swap_changes_exactly_one_captioned_attribute(attribute):
    _, attrs = probe.probe_set(16)
    for a in attrs:
        b = probe.swapped(a, attribute)
        changed = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
        assert changed == [attribute]
        assert synthetic.parse_caption(b.caption())[attribute] == getattr(b, attribute)
    with pytest.raises(ValueError, match="Unknown attribute"):
        probe.swapped(attrs[0], "size")
