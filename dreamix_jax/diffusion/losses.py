"""v-parameterisation (v = α ε − σ x) and the v-prediction loss."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dreamix_jax.diffusion.schedule import Schedule

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]  # (z, logsnr (B,)) -> v̂


def per_example(scale: jax.Array, like: jax.Array) -> jax.Array:
    """Reshape a per-example (B,) scale to broadcast against a (B, ...) array."""
    return jnp.reshape(scale, scale.shape + (1,) * (like.ndim - scale.ndim))


def noisy(x: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """z = α x + σ ε."""
    return per_example(alpha, x) * x + per_example(sigma, x) * eps


def v_target(x: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """v = α ε − σ x."""
    return per_example(alpha, x) * eps - per_example(sigma, x) * x


def x_from_v(z: jax.Array, v: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """x̂ = α z − σ v."""
    return per_example(alpha, z) * z - per_example(sigma, z) * v


def eps_from_v(z: jax.Array, v: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """ε̂ = σ z + α v."""
    return per_example(sigma, z) * z + per_example(alpha, z) * v


def v_from_x(z: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """v from a clean-data estimate: v = (α z − x) / σ."""
    return (per_example(alpha, z) * z - x) / per_example(sigma, z)


def v_loss_terms(x: jax.Array, key: jax.Array, schedule: Schedule = Schedule(), time_power: float = 1.0
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draw per-example times and noise: returns (z, logsnr (B,), target v).

    Times are t = 1 − (1 − u)^time_power with u ~ U(0, 1): 1 is uniform; larger powers train more
    often at high noise, where a small stage decides what its prompt asks for.
    """
    t_key, eps_key = jax.random.split(key)
    x = x.astype(jnp.float32)
    t = jax.random.uniform(t_key, x.shape[:1])
    if time_power != 1.0:
        t = 1.0 - (1.0 - t) ** time_power
    eps = jax.random.normal(eps_key, x.shape, jnp.float32)
    logsnr = schedule.logsnr(t)
    alpha, sigma = schedule.alpha_sigma(t)
    return noisy(x, eps, alpha, sigma), logsnr, v_target(x, eps, alpha, sigma)


def v_loss(denoise_fn: Denoiser, x: jax.Array, key: jax.Array, schedule: Schedule = Schedule(),
           time_power: float = 1.0) -> jax.Array:
    """Per-example (B,) mean squared error of the v-prediction, times drawn as in `v_loss_terms`."""
    z, logsnr, v = v_loss_terms(x, key, schedule, time_power)
    err = jnp.square(denoise_fn(z, logsnr).astype(jnp.float32) - v)
    return err.mean(axis=tuple(range(1, err.ndim)))
