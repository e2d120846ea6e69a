"""The T5 v1.1 text encoder (the cascade's frozen prompt encoder), its tokenizers and checkpoint names.

Architecture, as in the public T5 v1.1 checkpoints: token embedding (not scaled), then layers of
pre-norm self-attention and pre-norm gated-GELU MLP with residuals, then a final norm. The norm
is RMSNorm (scale only, statistics in float32); attention has no biases and no 1/√d logit scale
(it is folded into the trained query weights); one relative-position bias table (bidirectional
buckets) is built once and shared by every layer.

Three tokenizers produce T5 ids: SentencePiece for a real `spiece.model`; a byte-level one (ByT5
ids) that needs no file; and a word-level one for a small closed vocabulary (the shipped tiny
encoder's caption grammar), which spells any other word in bytes.

Classifier-free guidance's null condition is explicit: `null_text` gives all-zero embeddings
with an all-False mask, i.e. "no tokens". Attention reads nothing for a query that sees no key
(`models/attention.py`) and the U-Net pools only unmasked tokens, so the unconditional branch
sees no prompt at all; it is not the embedding of the empty string (which is one EOS token).
"""

import dataclasses
import hashlib
import logging
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamix_jax.models.attention import attention
from dreamix_jax.models.layers import logical, require_dropout_stream

log = logging.getLogger(__name__)

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2  # shared by the T5 SentencePiece vocabulary and ByT5 ids


# ------------------------------------------------------------------------------------------------
# Config.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Size of a T5 v1.1 encoder (defaults: v1.1 small)."""

    vocab_size: int = 32128
    d_model: int = 512
    num_heads: int = 6
    head_dim: int = 64
    num_layers: int = 8
    mlp_dim: int = 1024
    num_buckets: int = 32
    max_distance: int = 128
    dropout: float = 0.0
    eps: float = 1e-6
    param_dtype: str = "float32"
    dtype: str = "float32"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "T5Config":
        """Build from a (ml_collections) mapping; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - fields
        if unknown:
            raise ValueError(f"Unknown T5 config keys {sorted(unknown)}; valid keys are {sorted(fields)}.")
        return cls(**dict(cfg))


# ------------------------------------------------------------------------------------------------
# Layers.
# ------------------------------------------------------------------------------------------------


class RMSNorm(nnx.Module):
    """Scale-only RMS normalisation with float32 statistics (T5's "layer norm")."""

    def __init__(self, dim: int, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype):
        self.eps, self.dtype = eps, dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return (x * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bidirectional bucket of `key − query` offsets: exact near 0, logarithmic up to `max_distance`."""
    half = num_buckets // 2
    bucket = (relative_position > 0).astype(np.int32) * half  # keys after the query: upper half
    n = np.abs(relative_position)
    max_exact = half // 2
    log_ratio = np.log(np.maximum(n, 1).astype(np.float32) / max_exact) / math.log(max_distance / max_exact)
    large = np.minimum(max_exact + (log_ratio * (half - max_exact)).astype(np.int32), half - 1)
    return bucket + np.where(n < max_exact, n, large)


class RelativePositionBias(nnx.Module):
    """A learned per-head scalar for every bucket of query–key offsets, shared by all layers."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        init = logical(nnx.initializers.normal(1.0), "heads", "relpos")
        self.embedding = nnx.Param(init(rngs.params(), (cfg.num_heads, cfg.num_buckets), jnp.dtype(cfg.param_dtype)))

    def __call__(self, length: int) -> jax.Array:
        """Bias (1, heads, length, length), float32."""
        positions = np.arange(length)
        # Sequence length is static, so the buckets are a compile-time constant.
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], self.num_buckets, self.max_distance)
        return self.embedding[...].astype(jnp.float32)[:, buckets][None]


def _projection(in_shape, out_shape, names, stddev, cfg: T5Config, rngs: nnx.Rngs) -> nnx.LinearGeneral:
    """A bias-free projection with named axes, initialised like T5 (normal with fan-in scaling)."""
    axis = (-2, -1) if isinstance(in_shape, tuple) else -1
    return nnx.LinearGeneral(
        in_shape, out_shape, axis=axis, use_bias=False, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype), kernel_init=logical(nnx.initializers.normal(stddev), *names),
        rngs=rngs)


class SelfAttention(nnx.Module):
    """Multi-head self-attention without biases or logit scaling."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        heads = (cfg.num_heads, cfg.head_dim)
        inner = cfg.num_heads * cfg.head_dim
        self.query = _projection(cfg.d_model, heads, ("embed", "heads", "head_dim"),
                                 (cfg.d_model * cfg.head_dim) ** -0.5, cfg, rngs)
        self.key = _projection(cfg.d_model, heads, ("embed", "heads", "head_dim"), cfg.d_model ** -0.5, cfg, rngs)
        self.value = _projection(cfg.d_model, heads, ("embed", "heads", "head_dim"), cfg.d_model ** -0.5, cfg, rngs)
        self.out = _projection(heads, cfg.d_model, ("heads", "head_dim", "embed"), inner ** -0.5, cfg, rngs)

    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
        return self.out(attention(self.query(x), self.key(x), self.value(x), bias=bias, mask=mask, scale=1.0))


class GatedGeluMLP(nnx.Module):
    """`wo(gelu_tanh(wi_0 x) · wi_1 x)`."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.wi_0 = _projection(cfg.d_model, cfg.mlp_dim, ("embed", "mlp"), cfg.d_model ** -0.5, cfg, rngs)
        self.wi_1 = _projection(cfg.d_model, cfg.mlp_dim, ("embed", "mlp"), cfg.d_model ** -0.5, cfg, rngs)
        self.wo = _projection(cfg.mlp_dim, cfg.d_model, ("mlp", "embed"), cfg.mlp_dim ** -0.5, cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs if cfg.dropout else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.wo(self.dropout(jax.nn.gelu(self.wi_0(x), approximate=True) * self.wi_1(x)))


class EncoderLayer(nnx.Module):
    """Pre-norm self-attention then pre-norm MLP, each with a residual."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        norm = dict(eps=cfg.eps, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
        self.pre_attention_norm = RMSNorm(cfg.d_model, **norm)
        self.attention = SelfAttention(cfg, rngs=rngs)
        self.pre_mlp_norm = RMSNorm(cfg.d_model, **norm)
        self.mlp = GatedGeluMLP(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs if cfg.dropout else None)

    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.dropout(self.attention(self.pre_attention_norm(x), bias, mask))
        return x + self.dropout(self.mlp(self.pre_mlp_norm(x)))


class T5Encoder(nnx.Module):
    """Token ids (B, L) and their mask → float32 embeddings (B, L, d_model)."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        require_dropout_stream(cfg.dropout, rngs, "T5 encoder")
        self.cfg = cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.token_embedding = nnx.Embed(
            cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
            embedding_init=logical(nnx.initializers.normal(1.0), "vocab", "embed"), rngs=rngs)
        self.relative_bias = RelativePositionBias(cfg, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.eps, dtype=jnp.float32, param_dtype=param_dtype)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs if cfg.dropout else None)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"Expected token ids (B, L) and a mask of the same shape, got {ids.shape} "
                             f"and {mask.shape}.")
        x = self.dropout(self.token_embedding(ids))
        bias = self.relative_bias(ids.shape[1])
        key_mask = mask.astype(bool)[:, None, None, :]  # (B, heads, queries, keys): padding is never attended
        for layer in self.layers:
            x = layer(x, bias, key_mask)
        return self.dropout(self.final_norm(x))


def null_text(batch: int, length: int, dim: int) -> tuple[jax.Array, jax.Array]:
    """Classifier-free guidance's null condition: zero embeddings and an all-False mask."""
    return jnp.zeros((batch, length, dim), jnp.float32), jnp.zeros((batch, length), bool)


# ------------------------------------------------------------------------------------------------
# Tokenizers.
# ------------------------------------------------------------------------------------------------


class Tokenizer(Protocol):
    """Text → T5 ids ending with EOS (no padding)."""

    name: str  # identifies the vocabulary in cache keys

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as ByT5 ids (pad 0, eos 1, unk 2, byte b → b + 3); needs no vocabulary file."""

    name = "bytes"
    vocab_size = 256 + 3

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")] + [EOS_ID]


class WordTokenizer:
    """One id per vocabulary word (after the byte ids: word i → 259 + i); any other word is spelt in
    ByT5 bytes followed by a space byte, so no prompt is lost. Words are split on whitespace, lower-cased."""

    def __init__(self, words: Sequence[str]):
        words = [w.lower() for w in words]
        if len(set(words)) != len(words) or any(not w or w.split() != [w] for w in words):
            raise ValueError(f"A word vocabulary needs distinct single words, got {list(words)}.")
        self.ids = {w: ByteTokenizer.vocab_size + i for i, w in enumerate(words)}
        self.vocab_size = ByteTokenizer.vocab_size + len(words)
        self.name = "words-" + hashlib.sha256(" ".join(words).encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.lower().split():
            ids += [self.ids[word]] if word in self.ids else [b + 3 for b in (word + " ").encode("utf-8")]
        return ids + [EOS_ID]


class SentencePieceTokenizer:
    """T5's SentencePiece vocabulary (`spiece.model`), EOS appended as by T5."""

    def __init__(self, path: str | pathlib.Path):
        import sentencepiece  # only needed for real checkpoints

        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model {str(path)!r} does not exist; point "
                                    "config.tokenizer.path at the checkpoint's spiece.model.")
        data = path.read_bytes()
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=data)
        if self.processor.pad_id() != PAD_ID or self.processor.eos_id() != EOS_ID:
            raise ValueError(f"{path} is not a T5 vocabulary: it has pad id {self.processor.pad_id()} and eos id "
                             f"{self.processor.eos_id()}, T5 needs {PAD_ID} and {EOS_ID}.")
        self.name = "spiece-" + hashlib.sha256(data).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        return self.processor.vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text) + [EOS_ID]


def make_tokenizer(cfg: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer a config names: `{"kind": "bytes"}`, `{"kind": "words", "words": [...]}` or
    `{"kind": "sentencepiece", "path": ...}`."""
    kind = cfg.get("kind")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "words":
        return WordTokenizer(cfg.get("words") or ())
    if kind == "sentencepiece":
        return SentencePieceTokenizer(cfg.get("path") or "")
    raise ValueError(f"Unknown tokenizer kind {kind!r}; use 'bytes', 'words' or 'sentencepiece'.")


def tokenize(tokenizer: Tokenizer, prompts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids (B, max_length) int32, right-padded with 0, and their mask; over-long prompts are truncated."""
    ids = np.full((len(prompts), max_length), PAD_ID, np.int32)
    for row, prompt in enumerate(prompts):
        tokens = tokenizer.encode(prompt)
        if len(tokens) > max_length:
            log.warning("Prompt %r is %d tokens long; truncated to max_length=%d (EOS kept).",
                        prompt, len(tokens), max_length)
            tokens = tokens[:max_length - 1] + [EOS_ID]
        ids[row, :len(tokens)] = tokens
    return ids, ids != PAD_ID


# ------------------------------------------------------------------------------------------------
# Checkpoint names: our variable path → the tensor's name in each public format.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceTensor:
    """Where one weight lives in a checkpoint: its name (the first of `names` found) and stored shape.

    `transpose` marks PyTorch linears, stored (out, in). A stored axis may join several of ours
    (heads × head_dim); the loader reshapes it.
    """

    names: tuple[str, ...]
    shape: tuple[int, ...]
    transpose: bool = False


def checkpoint_names(cfg: T5Config, fmt: str) -> dict[tuple[str | int, ...], SourceTensor]:
    """For every encoder weight (its nnx state path), where it lives in a `safetensors` or `t5x` checkpoint."""
    if fmt not in ("safetensors", "t5x"):
        raise ValueError(f"Unknown checkpoint format {fmt!r}; use 'safetensors' or 't5x'.")
    hf = fmt == "safetensors"
    d, inner, mlp = cfg.d_model, cfg.num_heads * cfg.head_dim, cfg.mlp_dim

    def source(hf_names: str | tuple[str, ...], t5x_name: str, shape: tuple[int, ...],
               linear: bool = False) -> SourceTensor:
        """`shape` is the t5x (= our) layout; PyTorch stores linears transposed."""
        if not hf:
            return SourceTensor((t5x_name,), shape)
        names = (hf_names,) if isinstance(hf_names, str) else hf_names
        return SourceTensor(names, shape[::-1] if linear else shape, transpose=linear)

    names = {
        ("token_embedding", "embedding"): source(
            ("shared.weight", "encoder.embed_tokens.weight"), "token_embedder/embedding", (cfg.vocab_size, d)),
        ("relative_bias", "embedding"): source(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "encoder/relpos_bias/rel_embedding", (cfg.num_heads, cfg.num_buckets), linear=True),
        ("final_norm", "scale"): source("encoder.final_layer_norm.weight", "encoder/encoder_norm/scale", (d,)),
    }
    for i in range(cfg.num_layers):
        attn, ffn, t5x = f"encoder.block.{i}.layer.0", f"encoder.block.{i}.layer.1", f"encoder/layers_{i}"
        names["layers", i, "pre_attention_norm", "scale"] = source(
            f"{attn}.layer_norm.weight", f"{t5x}/pre_attention_layer_norm/scale", (d,))
        names["layers", i, "pre_mlp_norm", "scale"] = source(
            f"{ffn}.layer_norm.weight", f"{t5x}/pre_mlp_layer_norm/scale", (d,))
        for ours, theirs, shape in (("query", "q", (d, inner)), ("key", "k", (d, inner)),
                                    ("value", "v", (d, inner)), ("out", "o", (inner, d))):
            names["layers", i, "attention", ours, "kernel"] = source(
                f"{attn}.SelfAttention.{theirs}.weight", f"{t5x}/attention/{ours}/kernel", shape, linear=True)
        for w, shape in (("wi_0", (d, mlp)), ("wi_1", (d, mlp)), ("wo", (mlp, d))):
            names["layers", i, "mlp", w, "kernel"] = source(
                f"{ffn}.DenseReluDense.{w}.weight", f"{t5x}/mlp/{w}/kernel", shape, linear=True)
    return names
