"""Building blocks of the video U-Net, all on channels-last video (B, T, H, W, C).

Spatial layers see each frame on its own (norm statistics per frame, 2-D convs); temporal
layers mix frames at each pixel. The static `frames_independent` flag of the U-Net skips or
masks exactly the temporal ones.
"""

import math
from typing import Callable

import einops
import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


def logical(init: Initializer, *names: str | None) -> Initializer:
    """Wrap an initializer so its weight carries logical axis names (mapped to mesh axes in sharding.py)."""
    return nnx.with_partitioning(init, names)


def require_dropout_stream(rate: float, rngs: nnx.Rngs, what: str) -> None:
    """Dropout draws from a 'dropout' stream (reseeded by the train step): stop early when it is missing."""
    if rate and "dropout" not in rngs:
        raise ValueError(f"A {what} with dropout needs a 'dropout' RNG stream: build it with "
                         "nnx.Rngs(params=seed, dropout=seed).")


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal features of a per-example scalar (B,) -> (B, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = x.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def conv(
    in_ch: int,
    out_ch: int,
    kernel: tuple[int, ...],
    *,
    strides: int | tuple[int, ...] = 1,
    zero_init: bool = False,
    dtype: jnp.dtype,
    param_dtype: jnp.dtype,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 'SAME' convolution whose kernel is named (kernel..., conv_in, conv_out)."""
    init = nnx.initializers.zeros if zero_init else nnx.initializers.lecun_normal()
    names = ("kernel",) * len(kernel) + ("conv_in", "conv_out")
    return nnx.Conv(
        in_ch, out_ch, kernel, strides=strides, padding="SAME", dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical(init, *names), bias_init=logical(nnx.initializers.zeros, "conv_out"), rngs=rngs)


def dense(
    in_dim: int, out_dim: int, names: tuple[str, str], *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.Linear:
    """A dense layer with named kernel and bias."""
    return nnx.Linear(
        in_dim, out_dim, dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical(nnx.initializers.lecun_normal(), *names),
        bias_init=logical(nnx.initializers.zeros, names[1]), rngs=rngs)


def frame_group_norm(channels: int, num_groups: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype,
                     rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm whose statistics span (H, W, C-group) of one frame, never the time axis."""
    return nnx.GroupNorm(
        channels, num_groups=min(num_groups, channels), reduction_axes=(-3, -2, -1), dtype=dtype,
        param_dtype=param_dtype, scale_init=logical(nnx.initializers.ones, "norm"),
        bias_init=logical(nnx.initializers.zeros, "norm"), rngs=rngs)


def layer_norm(channels: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over channels at each position (and frame), with named scale and bias."""
    return nnx.LayerNorm(
        channels, dtype=dtype, param_dtype=param_dtype, scale_init=logical(nnx.initializers.ones, "norm"),
        bias_init=logical(nnx.initializers.zeros, "norm"), rngs=rngs)


class ResBlock(nnx.Module):
    """Per-frame residual block: norm → SiLU → 3×3 conv, embedding scale/shift, dropout, 3×3 conv."""

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int, *, num_groups: int, dropout: float,
                 dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = frame_group_norm(in_ch, num_groups, **kw)
        self.conv1 = conv(in_ch, out_ch, (3, 3), **kw)
        self.scale_shift = dense(embed_dim, 2 * out_ch, ("embed", "conv_out"), **kw)
        self.norm2 = frame_group_norm(out_ch, num_groups, **kw)
        # Draws from the 'dropout' stream, which the training step reseeds from its key.
        self.dropout = nnx.Dropout(dropout, rngs=rngs if dropout else None)
        self.conv2 = conv(out_ch, out_ch, (3, 3), **kw)
        self.skip = conv(in_ch, out_ch, (1, 1), **kw) if in_ch != out_ch else None

    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        """x: (B, T, H, W, C_in); emb: (B, E) → (B, T, H, W, C_out)."""
        h = self.conv1(nnx.silu(self.norm1(x)))
        scale, shift = jnp.split(self.scale_shift(nnx.silu(emb))[:, None, None, None, :], 2, axis=-1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(nnx.silu(h)))
        return h + (x if self.skip is None else self.skip(x))


class TemporalConv(nnx.Module):
    """Residual convolution over time at each pixel: norm → 3-tap conv → SiLU → 3-tap conv (zero-init)."""

    def __init__(self, channels: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Per-position norm: a statistic over time would leak across frames.
        self.norm = layer_norm(channels, **kw)
        self.conv1 = conv(channels, channels, (3,), **kw)
        # Zero-initialised so a new temporal layer starts as the identity of the image model.
        self.conv2 = conv(channels, channels, (3,), zero_init=True, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, T, H, W, C) → same; mixes neighbouring frames."""
        b, _, h, w, _ = x.shape
        seq = einops.rearrange(self.norm(x), "b t h w c -> (b h w) t c")
        seq = self.conv2(nnx.silu(self.conv1(seq)))
        return x + einops.rearrange(seq, "(b h w) t c -> b t h w c", b=b, h=h, w=w)


class Downsample(nnx.Module):
    """Per-frame 2× spatial downsampling by a strided 3×3 conv."""

    def __init__(self, channels: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, (3, 3), strides=2, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, T, H, W, C) → (B, T, H/2, W/2, C)."""
        return self.conv(x)


class Upsample(nnx.Module):
    """Per-frame 2× spatial upsampling: nearest neighbour, then a 3×3 conv."""

    def __init__(self, channels: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, (3, 3), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, T, H, W, C) → (B, T, 2H, 2W, C)."""
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        return self.conv(x)
