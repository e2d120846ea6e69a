"""The attention entry point: the implementation it picks equals the written-out reference math.

On CPU the pick is XLA; `jax.nn.dot_product_attention(implementation="xla")` is also what the GPU
path falls back to, so it is checked against the reference directly. The cuDNN pick is a pure
function of shapes and dtypes, checked with the backend test stubbed; its numbers need a GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax.models import attention as attn

B, T, S, HEADS, HEAD_DIM = 2, 6, 5, 2, 8


def _qkv(key: int, t: int = T, s: int = S, dtype=jnp.float32):
    """Random (q, k, v) in (B, L, heads, head_dim)."""
    kq, kk, kv = jax.random.split(jax.random.key(key), 3)
    q = jax.random.normal(kq, (B, t, HEADS, HEAD_DIM), dtype)
    k = jax.random.normal(kk, (B, s, HEADS, HEAD_DIM), dtype)
    v = jax.random.normal(kv, (B, s, HEADS, HEAD_DIM), dtype)
    return q, k, v


def _padding_mask() -> jax.Array:
    """(B, 1, 1, S) key-padding mask: example 0 sees 3 tokens, example 1 none (the null condition)."""
    valid = np.zeros((B, S), bool)
    valid[0, :3] = True
    return jnp.asarray(valid)[:, None, None, :]


def _relative_bias(t: int) -> jax.Array:
    """(1, heads, T, T) bias looked up by frame offset, as temporal attention builds it."""
    table = jax.random.normal(jax.random.key(7), (HEADS, 2 * t - 1))
    offsets = np.arange(t)[None, :] - np.arange(t)[:, None] + t - 1
    return table[:, offsets][None]


CASES = {
    "self": lambda: dict(qkv=_qkv(0, T, T)),
    "cross_padding_mask": lambda: dict(qkv=_qkv(1, T, S), mask=_padding_mask()),
    "relative_bias": lambda: dict(qkv=_qkv(2, T, T), bias=_relative_bias(T)),
    "relative_bias_identity_mask": lambda: dict(qkv=_qkv(3, T, T), bias=_relative_bias(T),
                                                mask=jnp.eye(T, dtype=bool)[None, None]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_chosen_implementation_equals_reference(case):
    c = CASES[case]()
    q, k, v = c["qkv"]
    kw = dict(bias=c.get("bias"), mask=c.get("mask"))
    assert attn.choose_implementation(q, k, v, **kw) == "xla"  # CPU
    np.testing.assert_allclose(attn.attention(q, k, v, **kw), attn.reference_attention(q, k, v, **kw),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_xla_dot_product_attention_equals_reference(case):
    """The GPU fallback itself; rows that see no key are compared after the entry point's zeroing."""
    c = CASES[case]()
    q, k, v = c["qkv"]
    bias, mask = c.get("bias"), c.get("mask")
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="xla")
    ref = attn.reference_attention(q, k, v, bias=bias, mask=mask)
    np.testing.assert_allclose(attn._zero_unseeing_queries(out, mask), ref, rtol=1e-5, atol=1e-5)


def test_all_masked_query_reads_nothing():
    q, k, v = _qkv(1, T, S)
    out = attn.attention(q, k, v, mask=_padding_mask())
    assert np.all(np.asarray(out[1]) == 0.0)  # example 1's mask hides every token
    assert np.abs(np.asarray(out[0])).max() > 0.1


def test_gradients_match_reference_with_bias():
    """The bias is learned (temporal attention): its gradient and q/k/v's must match too."""
    q, k, v = _qkv(2, T, T)
    bias = _relative_bias(T)
    mask = jnp.eye(T, dtype=bool)[None, None] | (jax.random.uniform(jax.random.key(9), (1, 1, T, T)) > 0.5)

    def loss(fn):
        return lambda q, k, v, bias: jnp.sum(jnp.sin(fn(q, k, v, bias=bias, mask=mask)))

    got = jax.grad(loss(attn.attention), argnums=(0, 1, 2, 3))(q, k, v, bias)
    want = jax.grad(loss(attn.reference_attention), argnums=(0, 1, 2, 3))(q, k, v, bias)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_bfloat16_xla_close_to_reference():
    q, k, v = _qkv(4, T, T, jnp.bfloat16)
    bias = _relative_bias(T)
    out = attn.attention(q, k, v, bias=bias)
    assert out.dtype == jnp.bfloat16
    ref = attn.reference_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), bias=bias)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=3e-2)


def test_cudnn_choice_rules(monkeypatch):
    """What a CUDA GPU would pick: cuDNN for half-precision self/temporal attention, XLA otherwise."""
    monkeypatch.setattr(attn, "_on_cuda", lambda: True)
    monkeypatch.delenv("DREAMIX_ATTENTION", raising=False)
    bf = jnp.bfloat16
    shape = lambda b, l, d=64, dt=bf: jax.ShapeDtypeStruct((b, l, 4, d), dt)  # noqa: E731
    q, kv = shape(2, 240), shape(2, 240)
    choose = attn.choose_implementation
    assert choose(q, kv, kv) == "cudnn"
    assert choose(shape(2, 240, dt=jnp.float32), shape(2, 240, dt=jnp.float32), shape(2, 240, dt=jnp.float32)) == "xla"
    assert choose(shape(2, 240, 12), shape(2, 240, 12), shape(2, 240, 12)) == "xla"  # head dim not a multiple of 8
    assert choose(shape(2, 240, 256), shape(2, 240, 256), shape(2, 240, 256)) == "xla"  # > 128
    bias = jax.ShapeDtypeStruct((1, 4, 16, 16), jnp.float32)
    assert choose(shape(8, 16), shape(8, 16), shape(8, 16), bias=bias) == "cudnn"  # temporal, relative bias
    eye = jax.ShapeDtypeStruct((1, 1, 16, 16), bool)
    assert choose(shape(8, 16), shape(8, 16), shape(8, 16), bias=bias, mask=eye) == "cudnn"  # frames path
    odd_bias = jax.ShapeDtypeStruct((1, 4, 15, 15), jnp.float32)
    assert choose(shape(8, 15), shape(8, 15), shape(8, 15), bias=odd_bias) == "xla"  # odd length with bias
    assert choose(shape(8, 15), shape(8, 15), shape(8, 15)) == "xla"  # odd length (spatial attention at 3 × 5)
    text_mask = jax.ShapeDtypeStruct((2, 1, 1, 64), bool)
    assert choose(q, shape(2, 64), shape(2, 64), mask=text_mask) == "xla"  # per-example padding mask
    monkeypatch.setenv("DREAMIX_ATTENTION", "xla")
    assert choose(q, kv, kv) == "xla"


@pytest.mark.skipif(not attn._on_cuda(), reason="cuDNN attention needs a CUDA GPU")
def test_cudnn_equals_reference_on_gpu():
    q, k, v = _qkv(5, 16, 16, jnp.bfloat16)
    bias = _relative_bias(16)
    assert attn.choose_implementation(q, k, v, bias) == "cudnn"
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    np.testing.assert_allclose(f32(attn.attention(q, k, v, bias=bias)),
                               attn.reference_attention(f32(q), f32(k), f32(v), bias=bias), atol=3e-2)
