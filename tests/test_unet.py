"""The video U-Net: shapes, the static frames_independent flag, and input validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import apply_unet, make_inputs
from dreamix_jax import pretrained
from dreamix_jax.models.unet3d import POSITION_FEATURES, UNet3D, UNet3DConfig, space_time_features


def test_output_is_v_shaped_like_the_input(tiny_config, tiny_model):
    x, logsnr, text, mask = make_inputs(tiny_config, batch=2)
    v = apply_unet(*tiny_model, x, logsnr, text, mask)
    assert v.shape == x.shape and v.dtype == jnp.float32
    assert np.isfinite(np.asarray(v)).all() and float(jnp.std(v)) > 1e-3


def test_fresh_temporal_layers_are_identity(tiny_config, tiny_model):
    # Temporal conv and temporal attention outputs start at zero, so both paths agree at init.
    x, logsnr, text, mask = make_inputs(tiny_config, batch=2)
    video = apply_unet(*tiny_model, x, logsnr, text, mask, frames_independent=False)
    frames = apply_unet(*tiny_model, x, logsnr, text, mask, frames_independent=True)
    np.testing.assert_allclose(video, frames, atol=1e-5)


def test_frames_path_equals_one_frame_clips(tiny_config, perturbed_model):
    x, logsnr, text, mask = make_inputs(tiny_config, batch=2)
    clip = apply_unet(*perturbed_model, x, logsnr, text, mask, frames_independent=True)
    for i in range(x.shape[1]):
        single = apply_unet(*perturbed_model, x[:, i:i + 1], logsnr, text, mask, frames_independent=True)
        np.testing.assert_allclose(clip[:, i:i + 1], single, atol=1e-5, rtol=1e-5)


def _frame_change(model, cfg, frames_independent: bool, j: int = 1) -> np.ndarray:
    """Max |Δ output| per frame when only frame j of the input is perturbed."""
    x, logsnr, text, mask = make_inputs(cfg, batch=2)
    x2 = x.at[:, j].add(0.5)
    a = apply_unet(*model, x, logsnr, text, mask, frames_independent=frames_independent)
    b = apply_unet(*model, x2, logsnr, text, mask, frames_independent=frames_independent)
    return np.asarray(jnp.abs(a - b).max(axis=(0, 2, 3, 4)))


def test_perturbing_one_frame_changes_only_that_frame_with_the_flag(tiny_config, perturbed_model):
    change = _frame_change(perturbed_model, tiny_config, frames_independent=True, j=1)
    assert change[1] > 1e-2
    assert np.all(np.delete(change, 1) == 0.0), change


def test_perturbing_one_frame_changes_the_others_without_the_flag(tiny_config, perturbed_model):
    change = _frame_change(perturbed_model, tiny_config, frames_independent=False, j=1)
    assert np.all(change > 1e-3), change


def test_rematerialisation_gives_the_same_output(tiny_config, perturbed_model):
    graphdef, state = perturbed_model
    cfg = dataclasses.replace(UNet3DConfig.from_config(tiny_config.model), remat=True)
    remat_graphdef = nnx.split(nnx.eval_shape(lambda: UNet3D(cfg, rngs=nnx.Rngs(0))))[0]
    x, logsnr, text, mask = make_inputs(tiny_config, batch=2)
    plain = apply_unet(graphdef, state, x, logsnr, text, mask)
    remat = apply_unet(remat_graphdef, state, x, logsnr, text, mask)
    np.testing.assert_allclose(plain, remat, atol=1e-6)


def test_conditioning_video_hook(tiny_config):
    cfg = dataclasses.replace(UNet3DConfig.from_config(tiny_config.model), cond_channels=3)
    model = nnx.eval_shape(lambda: UNet3D(cfg, rngs=nnx.Rngs(0)))
    x, logsnr, text, mask = make_inputs(tiny_config, batch=2)
    out = jax.eval_shape(lambda m: m(x, logsnr, text, mask, cond=x, cond_logsnr=logsnr), model)
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="cond_channels=3"):
        jax.eval_shape(lambda m: m(x, logsnr, text, mask), model)


@pytest.mark.parametrize("bad, message", [
    (dict(x=jnp.zeros((2, 4, 8, 8, 4))), r"Expected a video \(B, T, H, W, 3\)"),
    (dict(x=jnp.zeros((2, 4, 7, 8, 3))), "divisible by 2"),
    (dict(logsnr=jnp.zeros((3,))), "logsnr must have shape"),
    (dict(text=jnp.zeros((2, 5, 7))), r"Expected text \(B, L, 8\)"),
    (dict(text_mask=jnp.zeros((2, 4))), "text_mask must have shape"),
])
def test_bad_inputs_fail_with_a_sentence(tiny_config, tiny_model, bad, message):
    args = dict(zip(("x", "logsnr", "text", "text_mask"), make_inputs(tiny_config, batch=2)))
    args.update(bad)
    model = nnx.merge(*tiny_model)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda: model(**args))


def test_config_rejects_unknown_keys(tiny_config):
    with pytest.raises(ValueError, match="Unknown U-Net config keys"):
        UNet3DConfig.from_config({**tiny_config.model, "chanels": (8,)})


def test_a_position_embedding_added_to_a_trained_model_starts_as_identity(tiny_config, perturbed_model):
    graphdef, state = perturbed_model
    cfg = dataclasses.replace(UNet3DConfig.from_config(tiny_config.model), position_embedding=True)
    grown = UNet3D(cfg, rngs=nnx.Rngs(0))
    params = nnx.state(grown, nnx.Param)
    trained = pretrained.flatten_weights(nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, state), nnx.Param)), "unet")
    with pytest.raises(ValueError, match="have no 'unet/position_embedding/kernel'"):
        pretrained.fill(params, trained, "unet")
    assert pretrained.fill(params, trained, "unet", keep_zeros=True) == ["unet/position_embedding/kernel"]
    nnx.update(grown, params)
    x, logsnr, text, mask = make_inputs(tiny_config, batch=1)
    np.testing.assert_allclose(grown(x, logsnr, text, mask), apply_unet(graphdef, state, x, logsnr, text, mask),
                               atol=1e-5)
    # A weight the file lacks is kept only while it is all zeros.
    grown.position_embedding.kernel.set_value(jnp.ones_like(grown.position_embedding.kernel[...]))
    with pytest.raises(ValueError, match="have no"):
        pretrained.fill(nnx.state(grown, nnx.Param), trained, "unet", keep_zeros=True)


def test_space_time_features_tell_every_place_apart_but_not_the_frames_of_the_frames_objective():
    clip = np.asarray(space_time_features(4, 6, 8))
    assert clip.shape == (4, 6, 8, POSITION_FEATURES) and np.abs(clip).max() <= 1.0
    assert len(np.unique(clip.reshape(-1, POSITION_FEATURES).round(5), axis=0)) == 4 * 6 * 8
    # x·t among the features: one linear map can put a place's weight at x = +t (a rightward move).
    x, t = (np.arange(8) + 0.5) / 8 * 2 - 1, (np.arange(4) + 0.5) / 4 * 2 - 1
    target = np.broadcast_to(-(x[None, None, :] - t[:, None, None]) ** 2, (4, 6, 8))
    weights, *_ = np.linalg.lstsq(clip.reshape(-1, POSITION_FEATURES), target.reshape(-1), rcond=None)
    np.testing.assert_allclose(clip @ weights, target, atol=0.05)
    frames = np.asarray(space_time_features(4, 6, 8, frames_independent=True))
    assert np.all(frames == frames[:1]) and len(np.unique(frames[0].reshape(-1, POSITION_FEATURES).round(5), axis=0)) == 48
