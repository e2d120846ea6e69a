"""The cascade: tiny end-to-end sampling, resizing, degrade, chunking, conditioning augmentation, configs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cascade as cascade_configs
from dreamix_jax import cascade
from dreamix_jax.diffusion import Schedule

BATCH, TEXT_LEN = 2, 8


def smooth_video(batch: int, frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Low-frequency sinusoids in time and space, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t, y, x = np.meshgrid(np.linspace(0, 1, frames), np.linspace(0, 1, height), np.linspace(0, 1, width),
                          indexing="ij")
    phases = rng.uniform(0, 2 * np.pi, (batch, 3, 3))
    video = np.stack([np.stack([np.sin(2 * t + p[c, 0]) * np.cos(1.5 * y + p[c, 1]) * np.sin(x + p[c, 2])
                                for c in range(3)], -1) for p in phases])
    return video.astype(np.float32)


@pytest.fixture(scope="module")
def tiny(small):
    """Stages of `configs/cascade.py:tiny` (the shipped file's, `test_pretrained.py`) with 2 sampling steps
    each, and small U-Nets for them (`conftest.small_cascade_file`): sampling is the same for any U-Net."""
    return small.stages, small.unets


@pytest.fixture(scope="module")
def text(tiny):
    stages, _ = tiny
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(BATCH, TEXT_LEN, stages[0].unet.text_dim)).astype(np.float32)
    mask = np.arange(TEXT_LEN)[None] < np.array([[5], [8]])
    return jnp.asarray(emb), jnp.asarray(mask)


@pytest.fixture(scope="module")
def edited(tiny, text):
    """The tiny cascade run as an edit: the base stage starts from a degraded video at s = (1, 0.5)."""
    stages, models = tiny
    source = jnp.asarray(smooth_video(BATCH, 20, 40, 60))
    start = cascade.degrade(source, stages[0])
    return cascade.sample_cascade(models, stages, *text, jax.random.key(0), x_start=start,
                                  s=jnp.array([1.0, 0.5]))


# ------------------------------------------------------------------------------------------------
# End to end.
# ------------------------------------------------------------------------------------------------


def test_a_given_base_video_feeds_the_sr_stages_as_a_sampled_one_does(tiny, text, edited):
    stages, models = tiny
    given = cascade.sample_cascade(models, stages, *text, jax.random.key(0), base_video=edited[0])
    for ours, theirs in zip(given, edited, strict=True):  # same keys, same input: the same SR samples
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    with pytest.raises(ValueError, match="the base stage makes"):
        cascade.sample_cascade(models, stages, *text, jax.random.key(0), base_video=edited[1])


def test_tiny_cascade_shapes_and_fps(tiny, edited):
    stages, _ = tiny
    assert [s.kind for s in stages] == ["base", "tsr", "ssr", "ssr"]
    assert [(s.frames, s.height, s.width, s.fps) for s in stages] == [
        (8, 16, 16, 4), (16, 16, 16, 8), (16, 32, 32, 8), (16, 64, 64, 8)]
    for stage, video in zip(stages, edited, strict=True):
        assert video.shape == (BATCH, *stage.shape, 3) and video.dtype == jnp.float32
        assert bool(jnp.isfinite(video).all()) and float(jnp.abs(video).max()) <= 1.0 + 1e-6
    assert [s.name for s in stages if s.finetune] == ["base", "ssr1", "ssr2"]


def test_stage_sampling_is_deterministic_and_seeded(tiny, text, edited):
    stages, models = tiny
    previous = edited[2]
    again = cascade.sample_stage(models[3], stages[3], *text, jax.random.key(5), previous=previous)
    same = cascade.sample_stage(models[3], stages[3], *text, jax.random.key(5), previous=previous)
    other = cascade.sample_stage(models[3], stages[3], *text, jax.random.key(6), previous=previous)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(same))
    assert float(jnp.abs(again - other).max()) > 1e-3
    # The two chunks get their own noise: their outputs are not copies of each other.
    assert float(jnp.abs(again[:, :8] - again[:, 8:]).max()) > 1e-3


def test_chunks_cover_every_frame_once_in_order(tiny, text, monkeypatch):
    """With a sampler that returns its conditioning chunk, the stitched output is the conditioning."""
    stages, models = tiny
    stage = stages[3]
    calls = []

    def fake_chunk(graphdef, state, z_start, t_start, keys, text, text_mask, cond, cond_logsnr, guidance, eta, **kw):
        calls.append(cond.shape[1])
        return cond

    monkeypatch.setattr(cascade, "_sample_chunk", fake_chunk)
    previous = jnp.asarray(smooth_video(BATCH, stage.in_frames, stage.in_height, stage.in_width))
    frame_index = jnp.arange(stage.in_frames, dtype=jnp.float32)[None, :, None, None, None] / stage.in_frames
    previous = previous.at[..., 0].set(jnp.broadcast_to(frame_index[..., 0], previous.shape[:-1]))
    stage = dataclasses.replace(stage, cond_aug=0.0)
    out = cascade.sample_stage(models[3], stage, *text, jax.random.key(0), previous=previous)
    assert calls == [8, 8]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(cascade.upsample_condition(previous, stage)))
    assert cascade.frame_chunks(128, 32) == [slice(0, 32), slice(32, 64), slice(64, 96), slice(96, 128)]
    with pytest.raises(ValueError, match="do not tile"):
        cascade.frame_chunks(16, 5)


# ------------------------------------------------------------------------------------------------
# Resizing and degrade.
# ------------------------------------------------------------------------------------------------


def test_spatial_round_trip_is_close():
    video = jnp.asarray(smooth_video(1, 2, 64, 64))
    for method in cascade.SPATIAL_METHODS:
        back = cascade.resize_space(cascade.resize_space(video, 32, 32), 64, 64, method)
        assert float(jnp.abs(back - video).max()) < 0.05, method


def test_temporal_round_trip_is_close():
    video = jnp.asarray(smooth_video(1, 32, 4, 4))
    down = cascade.resample_time(video, 16, "nearest")
    np.testing.assert_array_equal(np.asarray(down), np.asarray(video[:, ::2]))  # subsampling
    np.testing.assert_array_equal(np.asarray(cascade.resample_time(down, 32, "nearest")),
                                  np.asarray(jnp.repeat(down, 2, axis=1)))  # repetition
    back = cascade.resample_time(down, 32, "linear")
    np.testing.assert_array_equal(np.asarray(back[:, ::2]), np.asarray(down))  # original frames kept
    assert float(jnp.abs(back - video)[:, :-1].max()) < 0.02
    np.testing.assert_array_equal(np.asarray(back[:, -1]), np.asarray(down[:, -1]))  # held, not extrapolated


def test_training_crops_are_aligned_windows_of_the_whole_pair(tiny):
    stages, _ = tiny
    clips = jnp.asarray(smooth_video(6, 16, 64, 64))
    for stage, crop in ((stages[1], (8, 8)), (stages[3], (4, 16))):
        # As NumPy arrays: the search below slices thousands of candidate windows.
        target, cond = map(np.asarray, cascade.training_pair(clips, stage))
        small_target, small_cond = map(np.asarray, cascade.training_pair(clips, stage, crop, jax.random.key(3)))
        grid = (stage.frames // stage.in_frames, stage.height // stage.in_height, stage.width // stage.in_width)
        starts = set()
        for i in range(clips.shape[0]):
            # Find the window in the whole target; the condition must be cut at the same place.
            frames, pixels = crop
            matches = [(t, y, x) for t in range(0, stage.frames - frames + 1, grid[0])
                       for y in range(0, stage.height - pixels + 1, grid[1])
                       for x in range(0, stage.width - pixels + 1, grid[2])
                       if np.array_equal(target[i, t:t + frames, y:y + pixels, x:x + pixels], small_target[i])]
            assert len(matches) == 1, stage.name
            t, y, x = matches[0]
            np.testing.assert_array_equal(small_cond[i], cond[i, t:t + frames, y:y + pixels, x:x + pixels])
            starts.add(matches[0])
        assert len(starts) > 1  # one window per example, not one per batch
    with pytest.raises(ValueError, match="multiple of the stage's upsampling factors"):
        cascade.training_pair(clips, stages[1], (7, 8), jax.random.key(0))
    with pytest.raises(ValueError, match="does not fit"):
        cascade.training_pair(clips, stages[3], (4, 128), jax.random.key(0))


def test_blur_space_is_a_gaussian_of_each_examples_sigma():
    video = np.zeros((3, 2, 21, 21, 1), np.float32)
    video[:, :, 10, 10] = 1.0  # one bright pixel, far from the edges
    out = np.asarray(cascade.blur_space(jnp.asarray(video), jnp.array([0.0, 0.6, 1.5]), 1.5))
    np.testing.assert_array_equal(out[0], video[0])  # σ = 0: bit for bit
    offsets = np.arange(21) - 10
    for i, sigma in ((1, 0.6), (2, 1.5)):
        frame = out[i, 0, :, :, 0]
        assert frame.sum() == pytest.approx(1.0, abs=1e-5)
        variance = (frame.sum(1) * offsets ** 2).sum()  # along rows; the kernel is cut at 3σ
        assert variance == pytest.approx(sigma ** 2, rel=0.03)
        np.testing.assert_allclose(frame, frame.T, atol=1e-7)  # the same blur along both axes
        np.testing.assert_array_equal(out[i, 1], out[i, 0])  # every frame alike


def test_training_blur_softens_the_condition_only(tiny):
    tsr = tiny[0][1]
    stripes = np.where(np.arange(64) // 8 % 2, 1.0, -1.0).astype(np.float32)  # hard edges every 8 columns
    clips = jnp.broadcast_to(jnp.asarray(stripes)[None, None, None, :, None], (8, 16, 64, 64, 3))
    target, cond = cascade.training_pair(clips, tsr)
    blur_target, blur_cond = cascade.training_pair(clips, tsr, key=jax.random.key(0), blur=2.0)
    np.testing.assert_array_equal(np.asarray(blur_target), np.asarray(target))
    steepness = lambda v: float((jnp.diff(v, axis=3) ** 2).mean())  # noqa: E731
    assert steepness(blur_cond) < 0.8 * steepness(cond)
    with pytest.raises(ValueError, match="pass a key"):
        cascade.training_pair(clips, tsr, blur=1.0)


@pytest.mark.parametrize("shape", [(37, 50, 90), (3, 8, 8), (16, 120, 40), (8, 16, 16)])
def test_degrade_matches_the_base_stage(tiny, shape):
    base = tiny[0][0]
    out = cascade.degrade(jnp.asarray(smooth_video(2, *shape)), base)
    assert out.shape == (2, base.frames, base.height, base.width, 3) and out.dtype == jnp.float32
    if shape == (8, 16, 16):  # already the base size: unchanged
        np.testing.assert_allclose(np.asarray(out), smooth_video(2, *shape), atol=1e-6)


def test_degrade_centre_crops_other_aspect_ratios(tiny):
    base = tiny[0][0]
    wide = np.zeros((1, 4, 30, 90, 3), np.float32)
    wide[:, :, :, :30], wide[:, :, :, 30:60], wide[:, :, :, 60:] = -1.0, 0.5, 1.0  # three square panels
    out = np.asarray(cascade.degrade(jnp.asarray(wide), base))
    np.testing.assert_allclose(out, 0.5, atol=1e-5)  # only the middle panel survives


# ------------------------------------------------------------------------------------------------
# Conditioning augmentation.
# ------------------------------------------------------------------------------------------------


def test_condition_augmentation_levels():
    cond = jnp.asarray(smooth_video(2, 4, 8, 8))
    schedule = Schedule()
    same, logsnr = cascade.augment_condition(cond, 0.0, jax.random.key(0), schedule)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(cond))
    np.testing.assert_allclose(np.asarray(logsnr), np.asarray(schedule.logsnr(jnp.zeros(2))))
    mixed, logsnr = cascade.augment_condition(cond, jnp.array([0.0, 0.5]), jax.random.key(0), schedule)
    np.testing.assert_array_equal(np.asarray(mixed[0]), np.asarray(cond[0]))
    alpha, sigma = schedule.alpha_sigma(jnp.float32(0.5))
    residual = (mixed[1] - alpha * cond[1]) / sigma  # the noise that was added: unit Gaussian
    assert abs(float(residual.std()) - 1.0) < 0.1 and float(logsnr[1]) == pytest.approx(float(schedule.logsnr(0.5)))


def test_training_condition_draws_levels_below_the_maximum():
    cond = jnp.asarray(smooth_video(64, 1, 4, 4))
    _, logsnr = cascade.training_condition(cond, 0.2, jax.random.key(1))
    assert float(logsnr.min()) >= float(Schedule().logsnr(0.2)) - 1e-4
    assert len(np.unique(np.asarray(logsnr))) == 64


# ------------------------------------------------------------------------------------------------
# Configs.
# ------------------------------------------------------------------------------------------------


def test_imagen_video_chain():
    stages = cascade.stages_from_config(cascade_configs.get_config("imagen_video"))
    assert [s.kind for s in stages] == ["base", "tsr", "ssr", "ssr", "tsr", "tsr", "ssr"]
    assert (stages[0].frames, stages[0].height, stages[0].width, stages[0].fps) == (16, 24, 40, 3)
    assert (stages[-1].frames, stages[-1].height, stages[-1].width, stages[-1].fps) == (128, 768, 1280, 24)
    assert [s.name for s in stages if s.finetune] == ["base", "ssr1", "ssr2"]
    assert stages[0].unet.temporal_attention_levels and not any(s.unet.temporal_attention_levels for s in stages[1:])
    assert stages[-1].unet.attention_levels == () and stages[-1].chunk == 32


def test_cascade_errors_name_the_stage():
    config = cascade_configs.get_config("tiny")
    config.stages.ssr1.in_height = 8
    with pytest.raises(ValueError, match="Stage 'ssr1' expects input 16×8×16"):
        cascade.stages_from_config(config)
    config = cascade_configs.get_config("tiny")
    config.stages.ssr2.chunk = 5
    with pytest.raises(ValueError, match="Stage 'ssr2' samples in chunks of 5"):
        cascade.stages_from_config(config)
    config = cascade_configs.get_config("tiny")
    config.stage_order = ("tsr", "base")
    with pytest.raises(ValueError, match="starts with one stage of kind 'base'"):
        cascade.stages_from_config(config)
    with pytest.raises(ValueError, match="Unknown cascade variant"):
        cascade_configs.get_config("huge")
