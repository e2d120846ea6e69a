"""The one attention entry point and the multi-head attention module built on it."""

import functools
import os

import jax
import jax.extend.backend  # noqa: F401  (platform_version of the GPU backend)
import jax.numpy as jnp
from flax import nnx

from dreamix_jax.models.layers import layer_norm, logical


# Set DREAMIX_ATTENTION=xla to force the XLA path everywhere (e.g. to time cuDNN against it on a GPU).
_FORCE_ENV = "DREAMIX_ATTENTION"
_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@functools.cache
def _on_cuda() -> bool:
    """Whether the default backend is an NVIDIA GPU (cuDNN present); ROCm GPUs and TPUs are not."""
    try:
        return jax.default_backend() == "gpu" and "cuda" in jax.extend.backend.get_backend().platform_version.lower()
    except Exception:  # an odd plugin backend: take the portable path
        return False


def choose_implementation(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None,
                          mask: jax.Array | None = None) -> str:
    """'cudnn' where cuDNN flash attention takes these shapes and dtypes on this backend, else 'xla'.

    TPU and CPU use XLA: Pallas splash attention needs sequence lengths in multiples of its block
    size and has no gradient for a learned bias, which temporal attention has. On a CUDA GPU the
    conditions mirror jax's own cuDNN checks, conservatively, since a failed check there surfaces
    only when the gradient is traced: half-precision q/k/v of one dtype, a head dim that is a
    multiple of 8 and at most 128 (256 needs Hopper), even lengths (jax 0.10 asks it of training
    kernels with a bias, jax 0.11 of every training kernel), and a bias/mask shared by the batch:
    cuDNN's bias gradient is for a (1, heads, T, S) bias, so a per-example key-padding mask (text)
    goes to XLA.
    """
    if os.environ.get(_FORCE_ENV, "").lower() == "xla" or not _on_cuda():
        return "xla"
    head_dim = q.shape[-1]
    if q.dtype not in _HALF or k.dtype != q.dtype or v.dtype != q.dtype or v.shape[-1] != head_dim:
        return "xla"
    if head_dim % 8 or head_dim > 128:
        return "xla"
    if q.shape[1] % 2 or k.shape[1] % 2:  # jax 0.11's training kernels take even lengths only
        return "xla"
    if bias is not None or mask is not None:
        if any(a is not None and (a.ndim != 4 or a.shape[0] != 1) for a in (bias, mask)):
            return "xla"
    return "cudnn"


def reference_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """The attention math written out (float32 logits and softmax): what every implementation must equal."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bnts,bsnh->btnh", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return _zero_unseeing_queries(out.astype(q.dtype), mask)


def _zero_unseeing_queries(out: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Zero the output of queries whose mask row hides every key."""
    if mask is None:
        return out
    sees_a_key = jnp.any(mask, axis=-1)  # (B, heads or 1, queries or 1)
    return out * jnp.swapaxes(sees_a_key, 1, 2)[..., None].astype(out.dtype)


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
    The kernel is picked here, once for every layer (`choose_implementation`).
    """
    implementation = choose_implementation(q, k, v, bias, mask)
    if implementation == "cudnn":
        t, s = q.shape[1], k.shape[1]
        heads = q.shape[2]
        # cuDNN adds bias and mask as one (1, heads, T, S) bias in the input dtype.
        if bias is not None:
            bias = jnp.broadcast_to(bias, (1, heads, t, s)).astype(q.dtype)
        cudnn_mask = None if mask is None else jnp.broadcast_to(mask, (1, heads, t, s))
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=cudnn_mask, scale=scale,
                                           implementation="cudnn")
    else:
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation="xla")
    return _zero_unseeing_queries(out, mask)


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
