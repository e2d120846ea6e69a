"""Synthetic shapes data and the attribute detector."""

import dataclasses

import numpy as np
import pytest

from dreamix_jax import evaluate
from dreamix_jax.data import synthetic


def test_rendering_is_deterministic_per_seed():
    a, b = synthetic.sample_attributes(3), synthetic.sample_attributes(3)
    assert a == b
    np.testing.assert_array_equal(synthetic.render(a, 4, 16, 16), synthetic.render(b, 4, 16, 16))
    other = synthetic.render(synthetic.sample_attributes(4), 4, 16, 16)
    assert np.abs(other - synthetic.render(a, 4, 16, 16)).max() > 0.1
    video = synthetic.render(a, 16, 64, 64)
    assert video.shape == (16, 64, 64, 3) and video.dtype == np.float32
    assert video.min() >= -1.0 and video.max() <= 1.0


def test_captions_name_only_the_captioned_attributes():
    a = dataclasses.replace(synthetic.sample_attributes(0), color="red", shape="circle", direction="left",
                            background="gray")
    assert a.caption() == "a red circle moving left on a gray background"
    assert a.caption(video=False) == "a red circle on a gray background"
    assert dataclasses.replace(a, direction="still").caption() == "a red circle standing still on a gray background"
    # Size, start and texture change the pixels but not the caption.
    b = dataclasses.replace(a, size="large", start=(0.5, 0.5), texture=(1.0, 2.0, 0.5))
    assert a.caption() == b.caption()
    assert np.abs(synthetic.render(a, 2, 32, 32) - synthetic.render(b, 2, 32, 32)).max() > 0.1


def test_held_out_pairs_are_kept_apart():
    train = [synthetic.sample_attributes(s) for s in range(300)]
    held = [synthetic.sample_attributes(s, held_out=True) for s in range(30)]
    assert not any(a.held_out for a in train) and all(a.held_out for a in held)
    assert {(a.color, a.shape) for a in held} == set(synthetic.HELD_OUT)


def test_random_colors_stay_visible_and_never_make_a_held_out_pair():
    rng = np.random.default_rng(0)
    names = set()
    for seed in range(200):
        attrs = synthetic.sample_attributes(seed)
        recolored, rgb = synthetic.random_color(attrs, rng)
        names.add(recolored.color)
        assert recolored.color == synthetic.nearest(rgb, synthetic.COLORS) and not recolored.held_out
        assert np.linalg.norm(rgb - synthetic.BACKGROUNDS[attrs.background]) >= synthetic.RECOLOR_CONTRAST
        assert dataclasses.replace(recolored, color=attrs.color) == attrs  # nothing else changes
    assert names == set(synthetic.COLORS)
    # The detector reads recoloured clips as their captions say.
    for seed in range(8):
        attrs, rgb = synthetic.random_color(synthetic.sample_attributes(seed), rng)
        found = evaluate.detect(synthetic.render(attrs, 2, 64, 64, rgb))
        assert (found.color, found.shape) == (attrs.color, attrs.shape)


def test_tracks_stay_inside_the_frame():
    for seed in range(200):
        a = synthetic.sample_attributes(seed, held_out=None)
        assert synthetic.track_fits(a), a
        track = a.track(16)
        r = synthetic.SIZES[a.size]
        assert (track >= r).all() and (track <= 1 - r).all(), a


@pytest.mark.parametrize("shape", [(16, 64, 64), (16, 32, 32)])
def test_detector_reads_rendered_clips(shape):
    truths = [synthetic.sample_attributes(s, held_out=None) for s in range(200)]
    detections = [evaluate.detect(synthetic.render(a, *shape)) for a in truths]
    accuracy = evaluate.attribute_accuracy(detections, truths)
    assert min(accuracy.values()) >= 0.98, accuracy  # measured: 1.0 at 64² and 32²
    start_error = max(np.abs(np.subtract(d.start, a.start)).max() for d, a in zip(detections, truths))
    assert start_error < 0.03
    assert all(d.coverage == 1.0 for d in detections)


def test_detector_reads_clips_enlarged_from_the_base_size():
    """A true clip shrunk to the base stage's 8 × 16 × 16 and enlarged back, as stage outputs are scored,
    reads as it was made: the shape fit allows for the blur (a bounding-box fill threshold read 5 of
    these 38 triangles), and the colour comes from the shape's core, not its blurred edge."""
    from configs import cascade as cascade_configs
    from dreamix_jax import cascade

    base, *_, final = cascade.stages_from_config(cascade_configs.get_config("tiny"))
    truths = [synthetic.sample_attributes(s, held_out=None) for s in range(100)]
    clips = np.stack([synthetic.render(a, final.frames, final.height, final.width) for a in truths])
    small = cascade.degrade(clips, base)
    enlarged = cascade.resize_space(cascade.resample_time(small, final.frames), final.height, final.width)
    enlarged = np.clip(enlarged, -1.0, 1.0)
    accuracy = evaluate.attribute_accuracy([evaluate.detect(v) for v in enlarged], truths)
    assert min(accuracy.values()) >= 0.98, accuracy  # measured: 1.0


def test_detector_on_images_and_empty_clips():
    a = dataclasses.replace(synthetic.sample_attributes(1), direction="left")
    image = evaluate.detect(synthetic.render(a, 1, 64, 64))
    assert image.direction == "still" and image.color == a.color and image.shape == a.shape
    empty = evaluate.detect(np.full((4, 16, 16, 3), -1.0, np.float32))
    assert empty.shape == "none" and empty.background == "black" and empty.coverage == 0.0
    with pytest.raises(ValueError, match=r"Expected a clip \(T, H, W, 3\)"):
        evaluate.detect(np.zeros((16, 16, 3)))


def test_bundled_clip_is_the_example_and_admits_every_demo_edit():
    """The bundled clip decodes to `edit.EXAMPLE`, and its start lies on a training track for each demo motion."""
    from dreamix_jax import edit
    from dreamix_jax.data import video_io

    clip, fps = video_io.read_frames(edit.EXAMPLE_CLIP)
    assert clip.shape == (16, 64, 64, 3) and fps == edit.EXAMPLE_FPS
    assert np.abs(clip - synthetic.render(edit.EXAMPLE, 16, 64, 64)).mean() < 0.03  # H.264 at crf 12
    found = evaluate.detect(clip)
    assert {k: getattr(found, k) for k in ("color", "shape", "direction", "background")} == \
        synthetic.parse_caption(edit.EXAMPLE_CAPTION)
    assert np.allclose(found.start, edit.EXAMPLE.start, atol=0.02)
    for prompt in edit.EXAMPLE_EDITS:
        direction = synthetic.parse_caption(prompt)["direction"]
        assert synthetic.track_fits(dataclasses.replace(edit.EXAMPLE, direction=direction)), prompt
    assert not synthetic.track_fits(dataclasses.replace(edit.EXAMPLE, direction="down"))
