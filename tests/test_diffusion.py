"""Schedule and v-parameterisation identities; DDIM against the exact denoiser of Gaussian data."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax import diffusion as dm

MU, STD = 0.3, 0.5  # the Gaussian "data" distribution of the oracle tests


def oracle_v(z: jax.Array, logsnr: jax.Array) -> jax.Array:
    """Exact v for x ~ N(MU, STD²) per dimension: E[x | z] = MU + α STD² / (α² STD² + σ²) (z − α MU)."""
    alpha, sigma = dm.alpha_sigma(logsnr)
    a, s = dm.per_example(alpha, z), dm.per_example(sigma, z)
    x_hat = MU + a * STD**2 / (a**2 * STD**2 + s**2) * (z - a * MU)
    return dm.v_from_x(z, x_hat, alpha, sigma)


@functools.partial(jax.jit, static_argnames="num_steps")
def sample(z, t_start, key, eta, num_steps):
    return dm.ddim_sample(oracle_v, z, t_start, key, num_steps=num_steps, eta=eta, thresholding="none")


def test_schedule_endpoints_monotone_and_unit_norm():
    t = jnp.linspace(0.0, 1.0, 101)
    logsnr = dm.logsnr_cosine(t)
    np.testing.assert_allclose([logsnr[0], logsnr[-1]], [20.0, -20.0], rtol=1e-4)  # tan near π/2 in float32
    assert np.all(np.diff(np.asarray(logsnr)) < 0)
    alpha, sigma = dm.alpha_sigma(logsnr)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    shift = dm.resolution_shift(256, base_resolution=64)
    np.testing.assert_allclose(shift, 2 * np.log(64 / 256))
    np.testing.assert_allclose(dm.Schedule(shift=shift).logsnr(t), logsnr + shift, atol=1e-5)
    np.testing.assert_allclose(dm.logsnr_cosine(0.5), 0.0, atol=1e-5)  # symmetric clipping: SNR 1 midway


def test_x_and_eps_are_recovered_from_the_true_v():
    kx, ke, kt = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(kx, (16, 3, 4, 4, 3), minval=-1, maxval=1)
    eps = jax.random.normal(ke, x.shape)
    alpha, sigma = dm.Schedule().alpha_sigma(jax.random.uniform(kt, (16,), minval=0.05, maxval=0.95))
    z, v = dm.noisy(x, eps, alpha, sigma), dm.v_target(x, eps, alpha, sigma)
    np.testing.assert_allclose(dm.x_from_v(z, v, alpha, sigma), x, atol=1e-5)
    np.testing.assert_allclose(dm.eps_from_v(z, v, alpha, sigma), eps, atol=1e-5)
    np.testing.assert_allclose(dm.v_from_x(z, x, alpha, sigma), v, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_from_pure_noise_reproduces_the_data_distribution(eta):
    key = jax.random.key(1)
    z = jax.random.normal(key, (4096, 8))
    x = sample(z, jnp.ones(4096), jax.random.fold_in(key, 1), jnp.float32(eta), num_steps=200)
    assert abs(float(x.mean()) - MU) < 0.02, float(x.mean())
    assert abs(float(x.std()) - STD) < 0.02, float(x.std())


def test_small_start_time_returns_nearly_the_input():
    kx, kn = jax.random.split(jax.random.key(2))
    x = MU + STD * jax.random.normal(kx, (4096, 8))
    t_start = jnp.full((4096,), 0.02)
    z = dm.start_from(x, kn, t_start)
    sigma = float(dm.Schedule().alpha_sigma(0.02)[1])  # ≈ 0.03: the noise added, and the posterior spread
    out = sample(z, t_start, kn, jnp.float32(0.0), num_steps=200)
    rms = float(jnp.sqrt(jnp.mean((out - x) ** 2)))
    assert rms < 1.2 * sigma, (rms, sigma)
    assert float(jnp.sqrt(jnp.mean((z - x) ** 2))) > 0.5 * sigma  # noise was really added


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_mixed_start_times_in_one_batch_equal_one_by_one(eta):
    t_start = jnp.array([1.0, 0.5, 0.1, 0.7])
    keys = jax.random.split(jax.random.key(3), 4)
    x = MU + STD * jax.random.normal(jax.random.key(4), (4, 16))
    z = dm.start_from(x, keys, t_start)
    batched = sample(z, t_start, keys, jnp.float32(eta), num_steps=20)
    for i in range(4):
        single = sample(z[i:i + 1], t_start[i:i + 1], keys[i:i + 1], jnp.float32(eta), num_steps=20)
        np.testing.assert_allclose(batched[i:i + 1], single, atol=1e-5)
    assert float(jnp.abs(batched[0] - batched[2]).max()) > 1e-2  # the examples did differ


def test_legacy_uint32_keys_match_typed_keys():
    x, t_start = jnp.zeros((3, 4)), jnp.ones(3)
    for raw in (jax.random.PRNGKey(7), jax.random.split(jax.random.PRNGKey(7), 3)):
        np.testing.assert_array_equal(dm.start_from(x, raw, t_start),
                                      dm.start_from(x, jax.random.wrap_key_data(raw), t_start))


def test_guidance_weight_one_or_zero_runs_one_pass():
    calls = []

    def model_fn(z, logsnr, conditional):
        calls.append(conditional)
        return z * (2.0 if conditional else 0.5)

    z, logsnr = jnp.ones((2, 3)), jnp.zeros(2)
    np.testing.assert_allclose(dm.guided_denoiser(model_fn, 1.0)(z, logsnr), 2.0)
    assert calls == [True]
    np.testing.assert_allclose(dm.guided_denoiser(model_fn, 0.0)(z, logsnr), 0.5)
    assert calls == [True, False]
    np.testing.assert_allclose(dm.guided_denoiser(model_fn, 3.0)(z, logsnr), 0.5 + 3.0 * 1.5)
    assert [dm.runs_one_pass(w) for w in (1.0, 0, 3.0, jnp.float32(1.0))] == [True, True, False, False]
    traced = jax.jit(lambda w: dm.guided_denoiser(model_fn, w)(z, logsnr))
    np.testing.assert_allclose(traced(jnp.array([1.0, 3.0])), [[2.0] * 3, [5.0] * 3])


def test_thresholding():
    x = jnp.stack([jnp.linspace(-0.9, 0.9, 1000), jnp.linspace(-3.0, 3.0, 1000)])
    np.testing.assert_allclose(dm.threshold(x, "static"), jnp.clip(x, -1, 1))
    dynamic = dm.threshold(x, "dynamic")
    np.testing.assert_allclose(dynamic[0], x[0])  # in range: untouched (scale floored at 1)
    s = np.quantile(np.abs(np.asarray(x[1])), 0.995)
    np.testing.assert_allclose(dynamic[1], np.clip(x[1], -s, s) / s, rtol=1e-5)
    assert float(jnp.abs(dynamic[1]).max()) <= 1.0 + 1e-6
    np.testing.assert_array_equal(dm.threshold(x, "none"), x)
    with pytest.raises(ValueError, match="Unknown thresholding mode 'soft'"):
        dm.threshold(x, "soft")


def test_v_loss_is_zero_for_the_true_target_and_mean_square_for_zero():
    x = jax.random.uniform(jax.random.key(5), (3, 2, 4, 4, 3), minval=-1, maxval=1)
    key = jax.random.key(6)
    _, _, v = dm.v_loss_terms(x, key)
    exact = dm.v_loss(lambda z, logsnr: v, x, key)
    zero = dm.v_loss(lambda z, logsnr: jnp.zeros_like(z), x, key)
    assert exact.shape == (3,)
    np.testing.assert_allclose(exact, 0.0, atol=1e-10)
    np.testing.assert_allclose(zero, jnp.mean(v**2, axis=(1, 2, 3, 4)), rtol=1e-6)
