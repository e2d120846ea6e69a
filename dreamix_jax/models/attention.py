"""The one attention entry point and the multi-head attention module built on it."""

import jax
import jax.numpy as jnp
from flax import nnx

from dreamix_jax.models.layers import layer_norm, logical


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Dot-product attention on (B, L, heads, head_dim) arrays; logits in float32.

    `scale` multiplies the logits (default 1/√head_dim; T5 uses 1, folded into its query weights).
    A query whose `mask` row hides every key reads nothing (zeros), rather than the softmax's
    uniform average of hidden keys: that is what makes an all-False text mask a null condition.
    """
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale)
    if mask is None:
        return out
    sees_a_key = jnp.any(mask, axis=-1)  # (B, heads or 1, queries or 1)
    return out * jnp.swapaxes(sees_a_key, 1, 2)[..., None].astype(out.dtype)


class MultiHeadAttention(nnx.Module):
    """Pre-norm multi-head attention with a residual; queries from `x`, keys/values from `context`."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        *,
        context_dim: int | None = None,
        zero_init_output: bool = False,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads; choose a divisor.")
        head_dim = channels // num_heads
        # Keys/values read either the video itself or the text embeddings, whose width has its own name.
        kv_axis = "embed" if context_dim is None else "text_embed"
        context_dim = context_dim or channels
        dense = dict(dtype=dtype, param_dtype=param_dtype, use_bias=False, rngs=rngs)
        init = nnx.initializers.lecun_normal()
        self.norm = layer_norm(channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.query = nnx.LinearGeneral(
            channels, (num_heads, head_dim), kernel_init=logical(init, "embed", "heads", "head_dim"), **dense)
        self.key = nnx.LinearGeneral(
            context_dim, (num_heads, head_dim), kernel_init=logical(init, kv_axis, "heads", "head_dim"), **dense)
        self.value = nnx.LinearGeneral(
            context_dim, (num_heads, head_dim), kernel_init=logical(init, kv_axis, "heads", "head_dim"), **dense)
        out_init = nnx.initializers.zeros if zero_init_output else init
        self.out = nnx.LinearGeneral(
            (num_heads, head_dim), channels, axis=(-2, -1),
            kernel_init=logical(out_init, "heads", "head_dim", "embed"), **dense)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
        position: jax.Array | None = None,
    ) -> jax.Array:
        """x: (B, L, C); context: (B, S, C_ctx) or None for self-attention; `position` (L, C) is added
        to the normalised sequence before the projections (self-attention only)."""
        h = self.norm(x)
        if position is not None:
            h = h + position
        context = h if context is None else context
        out = attention(self.query(h), self.key(context), self.value(context), bias=bias, mask=mask)
        return x + self.out(out)
