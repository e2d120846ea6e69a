"""Stochastic DDIM in v-parameterisation, classifier-free guidance and x̂ thresholding.

The start time is per example and is data: one compiled sampler serves any mix of Dreamix
noise strengths `s` in a batch. Each example walks its own grid from `t_start` to 0 in the
same number of steps.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dreamix_jax.diffusion.losses import Denoiser, noisy, per_example, x_from_v
from dreamix_jax.diffusion.schedule import Schedule, alpha_sigma

THRESHOLDING_MODES = ("none", "static", "dynamic")


def runs_one_pass(guidance_weight: float | jax.Array) -> bool:
    """Whether `guided_denoiser` runs one U-Net pass for this weight: a Python 1 (the caption's) or 0 (the null's)."""
    return isinstance(guidance_weight, (int, float)) and guidance_weight in (0.0, 1.0)


def guided_denoiser(model_fn: Callable[[jax.Array, jax.Array, bool], jax.Array],
                    guidance_weight: float | jax.Array) -> Denoiser:
    """Classifier-free guidance v = v_u + w (v_c − v_u) over `model_fn(z, logsnr, conditional)`.

    `model_fn(..., False)` must use the explicit null text embedding. A Python weight of exactly
    1 (0) runs the conditional (unconditional) pass alone, statically; an array weight, scalar or
    per-example (B,), is traced and so can be swept without recompiling.
    """
    if runs_one_pass(guidance_weight):
        conditional = guidance_weight == 1.0
        return lambda z, logsnr: model_fn(z, logsnr, conditional)

    def denoise(z: jax.Array, logsnr: jax.Array) -> jax.Array:
        v_cond, v_uncond = model_fn(z, logsnr, True), model_fn(z, logsnr, False)
        w = jnp.asarray(guidance_weight, jnp.float32)
        w = per_example(w, v_cond) if w.ndim == 1 else w
        return v_uncond + w * (v_cond - v_uncond)

    return denoise


def threshold(x_hat: jax.Array, mode: str, percentile: float = 0.995) -> jax.Array:
    """Keep x̂ in [-1, 1]: 'static' clips; 'dynamic' (Imagen) rescales by a per-example percentile of |x̂|."""
    if mode == "none":
        return x_hat
    if mode == "static":
        return jnp.clip(x_hat, -1.0, 1.0)
    if mode == "dynamic":
        flat = jnp.abs(x_hat).reshape(x_hat.shape[0], -1)
        s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
        s = per_example(s, x_hat)
        return jnp.clip(x_hat, -s, s) / s
    raise ValueError(f"Unknown thresholding mode {mode!r}; choose one of {THRESHOLDING_MODES}.")


def example_keys(key: jax.Array, batch: int) -> jax.Array:
    """A key per example: given (B,) keys are kept, so an example's noise ignores its batch-mates."""
    # Legacy uint32 keys carry a trailing data axis; wrapping them makes ndim count keys alone.
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return key if key.ndim == 1 else jax.random.split(key, batch)


def _normal_like(keys: jax.Array, x: jax.Array) -> jax.Array:
    return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], jnp.float32))(keys)


def start_from(x: jax.Array, key: jax.Array, t_start: jax.Array, schedule: Schedule = Schedule()) -> jax.Array:
    """Noise clean data to per-example time t_start: z = α(t) x + σ(t) ε (SDEdit-style start)."""
    t_start = jnp.broadcast_to(jnp.asarray(t_start, jnp.float32), x.shape[:1])
    alpha, sigma = schedule.alpha_sigma(t_start)
    eps = _normal_like(example_keys(key, x.shape[0]), x)
    return noisy(x.astype(jnp.float32), eps, alpha, sigma).astype(x.dtype)


def ddim_sample(
    denoise_fn: Denoiser,
    z_start: jax.Array,
    t_start: jax.Array,
    key: jax.Array,
    *,
    num_steps: int,
    eta: float | jax.Array = 0.0,
    schedule: Schedule = Schedule(),
    thresholding: str = "dynamic",
) -> jax.Array:
    """Run `num_steps` DDIM steps from z at per-example time t_start (B,) down to 0; returns x̂₀.

    η = 0 is deterministic DDIM; η > 0 re-injects fresh noise (η = 1: ancestral-like).
    `key` is one key or one per example (B,). State is carried in float32.
    """
    if thresholding not in THRESHOLDING_MODES:
        raise ValueError(f"Unknown thresholding mode {thresholding!r}; choose one of {THRESHOLDING_MODES}.")
    batch = z_start.shape[0]
    t_start = jnp.broadcast_to(jnp.asarray(t_start, jnp.float32), (batch,))
    keys = example_keys(key, batch)

    def step(k, carry):
        z, _ = carry
        t = t_start * (1.0 - k / num_steps)
        s = t_start * (1.0 - (k + 1) / num_steps)
        logsnr_t = schedule.logsnr(t)
        alpha_t, sigma_t = alpha_sigma(logsnr_t)
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        v = denoise_fn(z.astype(z_start.dtype), logsnr_t).astype(jnp.float32)
        x_hat = threshold(x_from_v(z, v, alpha_t, sigma_t), thresholding)
        # ε̂ from the (thresholded) x̂, so the pair stays consistent with z.
        eps_hat = (z - per_example(alpha_t, z) * x_hat) / per_example(sigma_t, z)
        c = eta * (sigma_s / sigma_t) * jnp.sqrt(jnp.maximum(1.0 - (alpha_t / alpha_s) ** 2, 0.0))
        direction = jnp.sqrt(jnp.maximum(sigma_s**2 - c**2, 0.0))
        noise = _normal_like(jax.vmap(lambda kk: jax.random.fold_in(kk, k))(keys), z)
        z = per_example(alpha_s, z) * x_hat + per_example(direction, z) * eps_hat + per_example(c, z) * noise
        return z, x_hat

    z0 = z_start.astype(jnp.float32)
    _, x_hat = jax.lax.fori_loop(0, num_steps, step, (z0, jnp.zeros_like(z0)))
    return x_hat.astype(z_start.dtype)
