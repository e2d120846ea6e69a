"""The video U-Net (Imagen-Video style) shared by every cascade stage.

A stage differs only by its `UNet3DConfig`: widths, depth, which levels attend, and whether a
low-resolution conditioning video is concatenated to the input (super-resolution stages).

Factorised space-time design: every block is a per-frame residual block followed by a residual
temporal convolution and, at the levels the config names, spatial self-attention within each
frame, cross-attention to the text, and temporal self-attention over frames at each pixel.
`frames_independent=True` (a static Python flag: a separate compiled program) turns the clip
into a set of images: temporal attention gets the identity mask and temporal convs are skipped.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from dreamix_jax.models.attention import MultiHeadAttention
from dreamix_jax.models.layers import (ResBlock, TemporalConv, Downsample, Upsample, conv, dense,
                                       frame_group_norm, logical, require_dropout_stream,
                                       sinusoidal_embedding)


@dataclasses.dataclass(frozen=True)
class UNet3DConfig:
    """Architecture of one U-Net; levels are indexed from the input resolution (0) downwards."""

    channels: tuple[int, ...] = (32, 64)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1,)  # spatial self-attention + text cross-attention
    temporal_attention_levels: tuple[int, ...] = (1,)
    num_heads: int = 4
    text_dim: int = 32
    in_channels: int = 3
    cond_channels: int = 0  # channels of the low-resolution conditioning video; 0 = none
    # Add a learned function of each pixel's (x, y) and frame's place in the clip to the input
    # features. Convolutions and attention are otherwise blind to where in the frame and clip they
    # are (but for zero padding); a base stage must place the object where its prompt's motion puts
    # it in each frame, a function of (word, frame, x, y). Zero-initialised, so it can be added to a
    # trained stage and warm-started.
    position_embedding: bool = False
    out_channels: int = 3
    embed_dim: int = 0  # noise-level embedding width; 0 = 4 × channels[0]
    num_groups: int = 8
    dropout: float = 0.0
    max_temporal_distance: int = 32  # relative-position buckets cover offsets in [-d, d]
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "UNet3DConfig":
        """Build from a (ml_collections) mapping; lists become tuples, unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - fields
        if unknown:
            raise ValueError(f"Unknown U-Net config keys {sorted(unknown)}; valid keys are {sorted(fields)}.")
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(cfg).items()})

    @property
    def time_embed_dim(self) -> int:
        return self.embed_dim or 4 * self.channels[0]


class SpatialAttention(nnx.Module):
    """Self-attention among the pixels of each frame."""

    def __init__(self, channels: int, num_heads: int, **kw):
        self.attn = MultiHeadAttention(channels, num_heads, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, _, h, w, _ = x.shape
        tokens = einops.rearrange(x, "b t h w c -> (b t) (h w) c")
        return einops.rearrange(self.attn(tokens), "(b t) (h w) c -> b t h w c", b=b, h=h, w=w)


class CrossAttention(nnx.Module):
    """Every pixel of every frame attends to the text tokens (no mixing between frames)."""

    def __init__(self, channels: int, num_heads: int, text_dim: int, **kw):
        self.attn = MultiHeadAttention(channels, num_heads, context_dim=text_dim, **kw)

    def __call__(self, x: jax.Array, text: jax.Array, text_mask: jax.Array) -> jax.Array:
        b, t, h, w, _ = x.shape
        tokens = einops.rearrange(x, "b t h w c -> b (t h w) c")
        mask = text_mask.astype(bool)[:, None, None, :]  # (B, heads, queries, keys)
        out = self.attn(tokens, text.astype(x.dtype), mask=mask)
        return einops.rearrange(out, "b (t h w) c -> b t h w c", t=t, h=h, w=w)


class TemporalAttention(nnx.Module):
    """Self-attention over frames at each pixel, with a learned bias per head and frame offset, and a
    learned embedding of each frame's position in the clip."""

    def __init__(self, channels: int, num_heads: int, max_distance: int, *, param_dtype: jnp.dtype,
                 rngs: nnx.Rngs, **kw):
        # Zero-initialised output: a fresh temporal layer leaves the image model unchanged.
        self.attn = MultiHeadAttention(channels, num_heads, zero_init_output=True, param_dtype=param_dtype,
                                       rngs=rngs, **kw)
        self.max_distance = max_distance
        self.relative_bias = nnx.Param(
            logical(nnx.initializers.zeros, "heads", "relpos")(rngs.params(), (num_heads, 2 * max_distance + 1),
                                                               param_dtype))
        # Relative offsets alone make the layer blind to where a frame sits in the clip, and so is
        # every per-frame layer: from noise, "moving left" (on the right early, on the left late)
        # cannot be told from "moving right". Frames past the table share its last row.
        self.frame_embedding = nnx.Param(logical(nnx.initializers.normal(0.02), "relpos", "embed")(
            rngs.params(), (max_distance + 1, channels), param_dtype))

    def __call__(self, x: jax.Array, frames_independent: bool) -> jax.Array:
        b, t, h, w, _ = x.shape
        offsets = jnp.arange(t)[None, :] - jnp.arange(t)[:, None]  # key frame − query frame
        bucket = jnp.clip(offsets, -self.max_distance, self.max_distance) + self.max_distance
        bias = self.relative_bias[...][:, bucket][None].astype(jnp.float32)  # (1, heads, T, T)
        tokens = einops.rearrange(x, "b t h w c -> (b h w) t c")
        if frames_independent:
            # The fixed identity mask of the frames objective: each frame attends only to itself,
            # and an unordered set of frames has no positions.
            out = self.attn(tokens, bias=bias, mask=jnp.eye(t, dtype=bool)[None, None])
        else:
            position = self.frame_embedding[...][jnp.minimum(jnp.arange(t), self.max_distance)]
            out = self.attn(tokens, bias=bias, position=position.astype(tokens.dtype))
        return einops.rearrange(out, "(b h w) t c -> b t h w c", b=b, h=h, w=w)


class VideoBlock(nnx.Module):
    """One U-Net block: per-frame ResBlock, temporal conv, then the attention layers of its level."""

    def __init__(self, in_ch: int, out_ch: int, cfg: UNet3DConfig, *, attend: bool, attend_time: bool,
                 rngs: nnx.Rngs):
        kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.res = ResBlock(in_ch, out_ch, cfg.time_embed_dim, num_groups=cfg.num_groups, dropout=cfg.dropout,
                            **kw)
        self.temporal_conv = TemporalConv(out_ch, **kw)
        self.spatial_attn = SpatialAttention(out_ch, cfg.num_heads, **kw) if attend else None
        self.cross_attn = CrossAttention(out_ch, cfg.num_heads, cfg.text_dim, **kw) if attend else None
        self.temporal_attn = (TemporalAttention(out_ch, cfg.num_heads, cfg.max_temporal_distance, **kw)
                              if attend_time else None)

    def __call__(self, x: jax.Array, emb: jax.Array, text: jax.Array, text_mask: jax.Array,
                 frames_independent: bool) -> jax.Array:
        h = self.res(x, emb)
        if not frames_independent:  # the frames objective masks the residual temporal convolutions
            h = self.temporal_conv(h)
        if self.spatial_attn is not None:
            h = self.cross_attn(self.spatial_attn(h), text, text_mask)
        if self.temporal_attn is not None:
            h = self.temporal_attn(h, frames_independent)
        return h


def _apply_block(block: VideoBlock, x, emb, text, text_mask, frames_independent: bool) -> jax.Array:
    return block(x, emb, text, text_mask, frames_independent)


_apply_block_remat = nnx.remat(_apply_block, static_argnums=(5,))


class UNet3D(nnx.Module):
    """Predicts v for a noisy video given its log-SNR, the text and (SR stages) a low-res video."""

    def __init__(self, cfg: UNet3DConfig, *, rngs: nnx.Rngs):
        require_dropout_stream(cfg.dropout, rngs, "U-Net")
        self.cfg = cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        emb_dim, ch0 = cfg.time_embed_dim, cfg.channels[0]
        self.noise_mlp = nnx.Sequential(
            dense(ch0, emb_dim, ("embed", "mlp"), **kw), nnx.silu, dense(emb_dim, emb_dim, ("mlp", "embed"), **kw))
        self.aug_mlp = (nnx.Sequential(dense(ch0, emb_dim, ("embed", "mlp"), **kw), nnx.silu,
                                       dense(emb_dim, emb_dim, ("mlp", "embed"), **kw))
                        if cfg.cond_channels else None)
        self.text_pool = dense(cfg.text_dim, emb_dim, ("text_embed", "embed"), **kw)
        self.conv_in = conv(cfg.in_channels + cfg.cond_channels, ch0, (3, 3), **kw)
        if cfg.position_embedding:
            self.position_embedding = nnx.Linear(
                POSITION_FEATURES, ch0, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                kernel_init=logical(nnx.initializers.zeros, "position", "embed"))

        levels = len(cfg.channels)
        down, downsample, skip_ch = [], [], [ch0]
        ch = ch0
        for level, out_ch in enumerate(cfg.channels):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(self._block(ch, out_ch, level, rngs))
                ch = out_ch
                skip_ch.append(ch)
            down.append(nnx.List(blocks))
            if level < levels - 1:
                downsample.append(Downsample(ch, **kw))
                skip_ch.append(ch)
        self.down, self.downsample = nnx.List(down), nnx.List(downsample)
        self.mid = nnx.List([self._block(ch, ch, levels - 1, rngs), self._block(ch, ch, levels - 1, rngs)])

        up, upsample = [], []
        for level in reversed(range(levels)):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(self._block(ch + skip_ch.pop(), cfg.channels[level], level, rngs))
                ch = cfg.channels[level]
            up.append(nnx.List(blocks))
            if level > 0:
                upsample.append(Upsample(ch, **kw))
        self.up, self.upsample = nnx.List(up), nnx.List(upsample)
        self.norm_out = frame_group_norm(ch, cfg.num_groups, **kw)
        self.conv_out = conv(ch, cfg.out_channels, (3, 3), **kw)

    def _block(self, in_ch: int, out_ch: int, level: int, rngs: nnx.Rngs) -> VideoBlock:
        return VideoBlock(in_ch, out_ch, self.cfg, attend=level in self.cfg.attention_levels,
                          attend_time=level in self.cfg.temporal_attention_levels, rngs=rngs)

    def _embed(self, logsnr: jax.Array, text: jax.Array, text_mask: jax.Array,
               cond_logsnr: jax.Array | None) -> jax.Array:
        """Noise-level (and augmentation-level) embedding plus the pooled text."""
        ch0 = self.cfg.channels[0]
        emb = self.noise_mlp(sinusoidal_embedding(logsnr, ch0).astype(self.cfg.dtype))
        if self.aug_mlp is not None:
            emb = emb + self.aug_mlp(sinusoidal_embedding(cond_logsnr, ch0).astype(self.cfg.dtype))
        weights = text_mask.astype(jnp.float32)[..., None]
        pooled = (text.astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        return emb + self.text_pool(pooled.astype(self.cfg.dtype))

    def __call__(
        self,
        x: jax.Array,
        logsnr: jax.Array,
        text: jax.Array,
        text_mask: jax.Array,
        *,
        cond: jax.Array | None = None,
        cond_logsnr: jax.Array | None = None,
        frames_independent: bool = False,
    ) -> jax.Array:
        """x: (B, T, H, W, C) noisy video; logsnr: (B,); text: (B, L, D); text_mask: (B, L).

        cond: (B, T, H, W, C') low-res video already resized to x's frames and pixels, with its
        augmentation log-SNR cond_logsnr: (B,) — both required iff the config has cond_channels.
        Returns the v-prediction, shaped like x, in float32.
        """
        cfg = self.cfg
        _check_inputs(cfg, x, logsnr, text, text_mask, cond, cond_logsnr)
        if cond is not None:
            x = jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)
        emb = self._embed(logsnr, text, text_mask, cond_logsnr)
        run = _apply_block_remat if cfg.remat else _apply_block

        def step(block, h):
            return run(block, h, emb, text, text_mask, frames_independent)

        h = self.conv_in(x.astype(cfg.dtype))
        if cfg.position_embedding:
            _, t, height, width, _ = h.shape
            h = h + self.position_embedding(space_time_features(t, height, width, frames_independent).astype(h.dtype))
        skips = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = step(block, h)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        for block in self.mid:
            h = step(block, h)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = step(block, jnp.concatenate([h, skips.pop()], axis=-1))
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.conv_out(nnx.silu(self.norm_out(h))).astype(jnp.float32)


POSITION_FREQUENCIES = 4  # octaves per coordinate, from one period over the frame or clip up
POSITION_FEATURES = 2 * POSITION_FREQUENCIES * (3 + 2 * 2 * POSITION_FREQUENCIES)


def _fourier(u: jax.Array) -> jax.Array:
    """(..., 2F) sin/cos features of coordinates u in [-1, 1], F octaves."""
    angles = u[..., None] * (jnp.pi / 2 * 2.0 ** jnp.arange(POSITION_FREQUENCIES))
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def space_time_features(frames: int, height: int, width: int, frames_independent: bool = False) -> jax.Array:
    """(T, H, W, POSITION_FEATURES) features of each pixel centre's x, y and frame's t in [-1, 1],
    with the products x·t and y·t (so that one linear map of them can move a place over the clip).
    Frames of the frames objective, an unordered set, have no t: its features are zero."""
    x, y, t = ((jnp.arange(n, dtype=jnp.float32) + 0.5) / n * 2.0 - 1.0 for n in (width, height, frames))
    fx, fy, ft = _fourier(x), _fourier(y), _fourier(t) * (not frames_independent)
    shape = (frames, height, width)
    fx = jnp.broadcast_to(fx[None, None], (*shape, fx.shape[-1]))
    fy = jnp.broadcast_to(fy[None, :, None], (*shape, fy.shape[-1]))
    ft = jnp.broadcast_to(ft[:, None, None], (*shape, ft.shape[-1]))
    products = [(a[..., :, None] * ft[..., None, :]).reshape(*shape, -1) for a in (fx, fy)]
    return jnp.concatenate([fx, fy, ft, *products], axis=-1)


def _check_inputs(cfg: UNet3DConfig, x, logsnr, text, text_mask, cond, cond_logsnr) -> None:
    """Shape errors at trace time, in one sentence each, instead of deep inside a conv."""
    if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
        raise ValueError(f"Expected a video (B, T, H, W, {cfg.in_channels}), got shape {x.shape}.")
    factor = 2 ** (len(cfg.channels) - 1)
    if x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(f"Height and width {x.shape[2:4]} must be divisible by {factor} "
                         f"for {len(cfg.channels)} resolution levels.")
    if logsnr.shape != x.shape[:1]:
        raise ValueError(f"logsnr must have shape (B,) = {x.shape[:1]}, got {logsnr.shape}.")
    if text.ndim != 3 or text.shape[0] != x.shape[0] or text.shape[-1] != cfg.text_dim:
        raise ValueError(f"Expected text (B, L, {cfg.text_dim}) with B={x.shape[0]}, got {text.shape}.")
    if text_mask.shape != text.shape[:2]:
        raise ValueError(f"text_mask must have shape {text.shape[:2]}, got {text_mask.shape}.")
    if bool(cfg.cond_channels) != (cond is not None) or (cond is None) != (cond_logsnr is None):
        raise ValueError(f"This U-Net has cond_channels={cfg.cond_channels}: pass cond and cond_logsnr "
                         "together exactly when it is non-zero.")
    if cond is not None and cond.shape != (*x.shape[:4], cfg.cond_channels):
        raise ValueError(f"cond must have shape {(*x.shape[:4], cfg.cond_channels)} "
                         f"(resized to the output video), got {cond.shape}.")


def param_count(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
