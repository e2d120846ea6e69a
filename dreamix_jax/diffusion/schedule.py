"""Continuous-time noise schedule: t ∈ [0, 1], t = 0 clean data, t = 1 (nearly) pure noise."""

import dataclasses
import math

import jax
import jax.numpy as jnp


def logsnr_cosine(t: jax.Array, logsnr_min: float = -20.0, logsnr_max: float = 20.0,
                  shift: float = 0.0) -> jax.Array:
    """Cosine log-SNR schedule clipped to [logsnr_min, logsnr_max], plus a constant shift."""
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    return -2.0 * jnp.log(jnp.tan(a * jnp.asarray(t, jnp.float32) + b)) + shift


def resolution_shift(resolution: int, base_resolution: int) -> float:
    """Log-SNR shift that keeps a `resolution` image as noisy as `base_resolution` ("simple diffusion")."""
    return 2.0 * math.log(base_resolution / resolution)


def alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Signal and noise scales of z = α x + σ ε, with α² + σ² = 1."""
    logsnr = jnp.asarray(logsnr, jnp.float32)
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A clipped, optionally shifted cosine schedule; hashable, so usable as a static argument."""

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    shift: float = 0.0

    def logsnr(self, t: jax.Array) -> jax.Array:
        """Log-SNR at time t."""
        return logsnr_cosine(t, self.logsnr_min, self.logsnr_max, self.shift)

    def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(α, σ) at time t."""
        return alpha_sigma(self.logsnr(t))
