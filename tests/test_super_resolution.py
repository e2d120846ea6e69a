"""The shipped SR stages keep what the stage before them made: given a true clip at the base stage's
size, the cascade's output reads as the same colour, shape, direction and background, as the clip
at the base size does. benchmarks/tiny_quality.py measures the same over 64 base-stage samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax import cascade, evaluate
from dreamix_jax.data import synthetic

CLIPS = [
    synthetic.Attributes("blue", "square", "right", "white", "large", (0.35, 0.5), (0.4, 1.5, 0.0)),
    synthetic.Attributes("yellow", "triangle", "up", "black", "large", (0.5, 0.7), (1.2, 2.0, 1.0)),
]


@pytest.mark.parametrize("attrs", CLIPS, ids=lambda a: a.caption())
def test_super_resolution_keeps_the_base_stage_video(shipped, attrs):
    true = synthetic.render(attrs, 16, 64, 64)
    video = start = cascade.degrade(jnp.asarray(true)[None], shipped.base)  # a perfect base-stage output
    text, mask = shipped.text([attrs.caption()])
    key = jnp.stack([jax.random.key(0)])
    for i, (stage, unet) in enumerate(zip(shipped.stages[1:], shipped.unets[1:], strict=True)):
        video = cascade.sample_stage(unet, stage, jnp.asarray(text), jnp.asarray(mask), cascade._fold(key, 101 + i),
                                     previous=video, schedule=shipped.schedule)
    assert video.shape == (1, 16, 64, 64, 3)
    found, base = evaluate.detect(np.clip(np.asarray(video[0]), -1, 1)), evaluate.detect(np.asarray(start[0]))
    for name in ("color", "shape", "direction", "background"):
        assert getattr(found, name) == getattr(base, name) == getattr(attrs, name), name
