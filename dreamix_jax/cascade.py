"""The Imagen-Video-style cascade: stage specs, resizing between stages, conditioning augmentation,
and cascade sampling (chunked over frames where a stage asks for it), of one model per stage or of
K stacked copies (K finetunes), each with its own group of the batch, in one program per stage.

A cascade is a base text-to-video stage followed by temporal (TSR: more frames, same pixels) and
spatial (SSR: more pixels, same frames) super-resolution stages. Every SR stage sees the previous
stage's video upsampled to its own frames and pixels, noised to a conditioning-augmentation level
that is fed to the model too, and concatenated to its input on channels.

Videos are channels-last (B, T, H, W, C) in [-1, 1]. Output frame j of a resampling in time sits
at input position j · T_in / T_out: both clips start together and last as long.
"""

import dataclasses
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from dreamix_jax.diffusion import (
    Schedule,
    ddim_sample,
    example_keys,
    guided_denoiser,
    noisy,
    per_example,
    runs_one_pass,
    start_from,
)
from dreamix_jax.models.t5 import null_text
from dreamix_jax.models.unet3d import UNet3DConfig
from dreamix_jax.sharding import over_trials, trial_batch_sharding

log = logging.getLogger(__name__)

STAGE_KINDS = ("base", "tsr", "ssr")
TEMPORAL_METHODS = ("nearest", "linear")  # nearest: subsample down, repeat up
SPATIAL_METHODS = ("linear", "cubic")


# ------------------------------------------------------------------------------------------------
# Stage specs.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stage:
    """One model of the cascade: what it makes, from what, and how it is sampled."""

    name: str
    kind: str  # base | tsr | ssr
    frames: int
    height: int
    width: int
    fps: float
    in_frames: int  # the previous stage's output (the base stage: its own size)
    in_height: int
    in_width: int
    in_fps: float
    unet: UNet3DConfig
    steps: int = 32  # DDIM steps at sampling
    guidance: float = 1.0  # classifier-free guidance weight (1: the caption alone; 0: the null caption alone)
    eta: float = 0.0  # DDIM stochasticity
    cond_aug: float = 0.0  # conditioning-augmentation time at sampling, in [0, 1]
    train_cond_aug: float = 0.5  # training draws the level from U(0, train_cond_aug)
    train_cond_blur: float = 0.0  # pretraining blurs the previous stage's frames by σ ~ U(0, this) of its pixels
    chunk: int = 0  # frames per sampling chunk; 0 samples all frames at once
    finetune: bool = False  # whether Dreamix finetunes this stage
    temporal_up: str = "nearest"  # how TSR conditioning gets its frames
    spatial_up: str = "cubic"  # how SSR conditioning gets its pixels

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Stage":
        """Build from a config mapping whose `unet` entry is a U-Net config; unknown keys are an error."""
        cfg = dict(cfg)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - fields
        if unknown:
            raise ValueError(f"Unknown stage config keys {sorted(unknown)}; valid keys are {sorted(fields)}.")
        return cls(**{**cfg, "unet": UNet3DConfig.from_config(cfg["unet"])})

    @property
    def is_sr(self) -> bool:
        return self.kind != "base"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(frames, height, width) of the video this stage makes."""
        return self.frames, self.height, self.width


def stages_from_config(config: Mapping[str, Any]) -> tuple[Stage, ...]:
    """Stage specs from a cascade config (`stage_order` and one `stages.<name>` entry each), checked."""
    missing = [name for name in config["stage_order"] if name not in config["stages"]]
    if missing:
        raise ValueError(f"stage_order names {missing}, which have no entry in config.stages.")
    stages = tuple(Stage.from_config({**dict(config["stages"][name]), "name": name}) for name in config["stage_order"])
    check_cascade(stages)
    return stages


def check_cascade(stages: Sequence[Stage]) -> None:
    """Raise a one-sentence error naming the stage whose spec does not fit the cascade."""
    if not stages or stages[0].kind != "base":
        raise ValueError("A cascade starts with one stage of kind 'base'.")
    previous = None
    for stage in stages:
        where = f"Stage {stage.name!r}"
        if stage.kind not in STAGE_KINDS:
            raise ValueError(f"{where} has kind {stage.kind!r}; choose one of {STAGE_KINDS}.")
        if stage.kind == "base" and previous is not None:
            raise ValueError(f"{where} is a second base stage; later stages are 'tsr' or 'ssr'.")
        if previous is not None:
            if (stage.in_frames, stage.in_height, stage.in_width, stage.in_fps) != (*previous.shape, previous.fps):
                raise ValueError(f"{where} expects input {stage.in_frames}×{stage.in_height}×{stage.in_width} at "
                                 f"{stage.in_fps} fps but {previous.name!r} makes {'×'.join(map(str, previous.shape))} "
                                 f"at {previous.fps} fps.")
            same_time = (stage.frames, stage.fps) == (stage.in_frames, stage.in_fps)
            same_space = (stage.height, stage.width) == (stage.in_height, stage.in_width)
            if stage.kind == "tsr" and not (same_space and stage.frames > stage.in_frames
                                            and stage.fps * stage.in_frames == stage.in_fps * stage.frames):
                raise ValueError(f"{where} (tsr) must add frames at a proportionally higher fps and keep the pixels.")
            if stage.kind == "ssr" and not (same_time and stage.height >= stage.in_height
                                            and stage.width >= stage.in_width):
                raise ValueError(f"{where} (ssr) must keep frames and fps and enlarge the pixels.")
        want_cond = 0 if stage.kind == "base" else stage.unet.in_channels
        if stage.unet.cond_channels != want_cond:
            raise ValueError(f"{where} needs unet.cond_channels={want_cond}, got {stage.unet.cond_channels}.")
        if stage.chunk and stage.frames % stage.chunk:
            raise ValueError(f"{where} samples in chunks of {stage.chunk} frames, which do not tile its "
                             f"{stage.frames} frames; use a divisor.")
        factor = 2 ** (len(stage.unet.channels) - 1)
        if stage.height % factor or stage.width % factor:
            raise ValueError(f"{where}'s {stage.height}×{stage.width} frames do not halve "
                             f"{len(stage.unet.channels) - 1} times; use multiples of {factor}.")
        if stage.temporal_up not in TEMPORAL_METHODS or stage.spatial_up not in SPATIAL_METHODS:
            raise ValueError(f"{where}: temporal_up must be one of {TEMPORAL_METHODS} and spatial_up one of "
                             f"{SPATIAL_METHODS}.")
        if not 0.0 <= stage.cond_aug <= 1.0:
            raise ValueError(f"{where}: cond_aug {stage.cond_aug} is a diffusion time and must lie in [0, 1].")
        previous = stage


# ------------------------------------------------------------------------------------------------
# Resizing.
# ------------------------------------------------------------------------------------------------


def resize_space(video: jax.Array, height: int, width: int, method: str = "linear") -> jax.Array:
    """Resize every frame; shrinking is antialiased, enlarging is bilinear ('linear') or bicubic ('cubic')."""
    b, t, _, _, c = video.shape
    return jax.image.resize(video.astype(jnp.float32), (b, t, height, width, c), method=method, antialias=True)


def resample_time(video: jax.Array, frames: int, method: str = "nearest") -> jax.Array:
    """Resample to `frames` frames: 'nearest' subsamples (fewer) or repeats (more); 'linear' interpolates."""
    t = video.shape[1]
    position = np.arange(frames) * t / frames
    lo = np.floor(position).astype(np.int32)
    if method == "nearest":
        return video[:, lo]
    if method != "linear":
        raise ValueError(f"Unknown temporal method {method!r}; choose one of {TEMPORAL_METHODS}.")
    hi = np.minimum(lo + 1, t - 1)
    w = jnp.asarray(position - lo, jnp.float32)[None, :, None, None, None]
    return video[:, lo].astype(jnp.float32) * (1.0 - w) + video[:, hi].astype(jnp.float32) * w


def center_crop(video: jax.Array, height: int, width: int) -> jax.Array:
    """The largest centred crop with the aspect ratio of height × width."""
    h, w = video.shape[2:4]
    if w * height > h * width:  # too wide
        new_w = max(1, round(h * width / height))
        left = (w - new_w) // 2
        return video[:, :, :, left:left + new_w]
    new_h = max(1, round(w * height / width))
    top = (h - new_h) // 2
    return video[:, :, top:top + new_h]


def degrade(video: jax.Array, stage: Stage) -> jax.Array:
    """Dreamix's corruption before noising: any clip → a stage's frames and pixels (centre-cropped).

    Given the base stage, this is the input the edit starts from.
    """
    video = center_crop(video, stage.height, stage.width)
    video = resample_time(video, stage.frames, "nearest")
    return resize_space(video, stage.height, stage.width, "linear")


def upsample_condition(video: jax.Array, stage: Stage) -> jax.Array:
    """The previous stage's video resized to this SR stage's frames and pixels."""
    video = resample_time(video, stage.frames, stage.temporal_up)
    return resize_space(video, stage.height, stage.width, stage.spatial_up)


def downsample_condition(video: jax.Array, stage: Stage) -> jax.Array:
    """A clip at this SR stage's size → what the previous stage would make (training pairs)."""
    video = resample_time(video, stage.in_frames, "nearest")
    return resize_space(video, stage.in_height, stage.in_width, "linear")


def training_pair(video: jax.Array, stage: Stage, crop: tuple[int, int] | None = None,
                  key: jax.Array | None = None, blur: float = 0.0) -> tuple[jax.Array, jax.Array | None]:
    """Any clip → this stage's target (`degrade` to the stage's size) and, for SR stages, its upsampled condition.

    `crop` = (frames, pixels) cuts the same random window (per example, from `key`) out of target and
    condition after the pair is made, so an SR stage learns its local job from examples many times
    cheaper than whole clips; windows start on the stage's upsampling grid, as whole clips do.
    `blur` > 0 softens the condition at the previous stage's size by a Gaussian of σ ~ U(0, blur)
    of its pixels (per example, from `key`), as a previous stage that draws soft edges would.
    """
    target = degrade(video, stage)
    if not stage.is_sr:
        return target, None
    if (crop or blur) and key is None:
        raise ValueError("A training crop or blur is drawn at random: pass a key.")
    crop_key, blur_key = jax.random.split(key) if key is not None else (None, None)
    previous = downsample_condition(target, stage)
    if blur:
        previous = blur_space(previous, jax.random.uniform(blur_key, previous.shape[:1], maxval=blur), blur)
    cond = upsample_condition(previous, stage)
    if crop is None:
        return target, cond
    return random_window((target, cond), crop, _window_grid(stage), crop_key)


def blur_space(video: jax.Array, sigma: jax.Array, max_sigma: float) -> jax.Array:
    """Gaussian blur of every frame, σ pixels per example (edges held); σ = 0 passes the video through."""
    radius = max(1, int(np.ceil(3 * max_sigma)))
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    # σ is floored far below a pixel, where every tap but the centre's weighs exactly 0 in float32.
    weights = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)[:, None]) ** 2)
    weights = weights / weights.sum(-1, keepdims=True)  # (B, taps)
    video = video.astype(jnp.float32)
    for axis in (2, 3):  # rows, then columns: the 2-D Gaussian is separable
        size = video.shape[axis]
        pad = [(0, 0)] * video.ndim
        pad[axis] = (radius, radius)
        padded = jnp.pad(video, pad, mode="edge")
        taps = jnp.stack([jax.lax.slice_in_dim(padded, k, k + size, axis=axis) for k in range(2 * radius + 1)], -1)
        video = jnp.einsum("bthwck,bk->bthwc", taps, weights)
    return video


def _window_grid(stage: Stage) -> tuple[int, int, int]:
    """Strides (frames, rows, columns) on which an SR stage's input samples line up with its output."""
    return (stage.frames // stage.in_frames, stage.height // stage.in_height, stage.width // stage.in_width)


def random_window(videos: Sequence[jax.Array], crop: tuple[int, int], grid: tuple[int, int, int],
                  key: jax.Array) -> tuple[jax.Array, ...]:
    """The same random (frames × pixels × pixels) window of each (B, T, H, W, C) video, one per example."""
    frames, pixels = crop
    _, t, h, w, _ = videos[0].shape
    if not (0 < frames <= t and 0 < pixels <= min(h, w)):
        raise ValueError(f"A training crop of {frames} frames × {pixels} pixels does not fit {t}×{h}×{w} clips.")
    if frames % grid[0] or pixels % grid[1] or pixels % grid[2]:
        raise ValueError(f"A training crop of {frames} frames × {pixels} pixels must be a multiple of the stage's "
                         f"upsampling factors {grid}.")
    limits = [(size - window) // stride + 1 for size, window, stride in zip((t, h, w), (frames, pixels, pixels), grid)]
    starts = [jax.random.randint(k, (videos[0].shape[0],), 0, limit) * stride
              for k, limit, stride in zip(jax.random.split(key, 3), limits, grid)]

    def cut(video, t0, y0, x0):
        return jax.lax.dynamic_slice(video, (t0, y0, x0, 0), (frames, pixels, pixels, video.shape[-1]))

    return tuple(jax.vmap(cut)(v, *starts) for v in videos)


# ------------------------------------------------------------------------------------------------
# Conditioning augmentation.
# ------------------------------------------------------------------------------------------------


def augment_condition(cond: jax.Array, level: jax.Array | float, key: jax.Array,
                      schedule: Schedule = Schedule()) -> tuple[jax.Array, jax.Array]:
    """Noise the conditioning video to diffusion time `level` (per example); returns it and its log-SNR.

    Level 0 passes the video through unchanged (bit for bit).
    """
    batch = cond.shape[0]
    level = jnp.broadcast_to(jnp.asarray(level, jnp.float32), (batch,))
    alpha, sigma = schedule.alpha_sigma(level)
    keys = example_keys(key, batch)
    eps = jax.vmap(lambda k: jax.random.normal(k, cond.shape[1:], jnp.float32))(keys)
    noised = noisy(cond.astype(jnp.float32), eps, alpha, sigma)
    return jnp.where(per_example(level > 0, noised), noised, cond.astype(jnp.float32)), schedule.logsnr(level)


def training_condition(cond: jax.Array, max_level: float, key: jax.Array,
                       schedule: Schedule = Schedule()) -> tuple[jax.Array, jax.Array]:
    """Training-time augmentation: a level drawn per example from U(0, max_level) (a stage's `train_cond_aug`)."""
    level_key, noise_key = jax.random.split(key)
    level = jax.random.uniform(level_key, cond.shape[:1], maxval=max_level)
    return augment_condition(cond, level, noise_key, schedule)


# ------------------------------------------------------------------------------------------------
# Sampling.
# ------------------------------------------------------------------------------------------------


def _fold(keys: jax.Array, i: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_steps", "schedule", "weight"))
def _sample_chunk(graphdef, state, z_start, t_start, keys, text, text_mask, cond, cond_logsnr, guidance, eta, *,
                  null: tuple[jax.Array, jax.Array], num_steps: int, schedule: Schedule,
                  weight: float | None = None) -> jax.Array:
    """DDIM over one chunk of frames; `cond` is None for the base stage. Compiled once per stage and shape.

    A static `weight` of 1 (0) runs the conditional (unconditional) pass alone and ignores the traced
    `guidance`; None guides with `guidance`. `null` is the
    unconditional (text, mask), an input rather than built here: as constants, the all-False mask
    made the unconditional pass's masked attention foldable, and XLA spent seconds per compile
    evaluating it.
    """
    model = nnx.merge(graphdef, state)
    null, null_mask = null

    def model_fn(z, logsnr, conditional):
        context, mask = (text, text_mask) if conditional else (null, null_mask)
        return model(z, logsnr, context, mask, cond=cond, cond_logsnr=cond_logsnr)

    return ddim_sample(guided_denoiser(model_fn, guidance if weight is None else weight), z_start, t_start, keys,
                       num_steps=num_steps, eta=eta, schedule=schedule)


@functools.partial(jax.jit, static_argnames=("graphdef", "trials", "num_steps", "schedule", "weight"))
def _sample_chunks(graphdef, state, z_start, t_start, keys, text, text_mask, cond, cond_logsnr, guidance, eta, *,
                   null: tuple[jax.Array, jax.Array], trials: Mesh, num_steps: int, schedule: Schedule,
                   weight: float | None = None) -> jax.Array:
    """`_sample_chunk` for K trials in one program: `state` stacked on a leading trial axis (K copies,
    over the `trials` mesh's trial axis) and the batch in K consecutive row groups, group k sampled
    with copy k. Compiled once per stage and shape."""
    k = jax.tree.leaves(state)[0].shape[0]
    guidance = jnp.broadcast_to(guidance, t_start.shape)  # per example, so it splits into the groups

    def group(x):
        def one(a):
            a = a.reshape(k, a.shape[0] // k, *a.shape[1:])
            return jax.lax.with_sharding_constraint(a, trial_batch_sharding(trials, a.shape))

        return None if x is None else jax.tree.map(one, x)

    def chunk(state, z_start, t_start, keys, text, text_mask, cond, cond_logsnr, guidance, null, eta):
        return _sample_chunk(graphdef, state, z_start, t_start, keys, text, text_mask, cond, cond_logsnr, guidance,
                             eta, null=null, num_steps=num_steps, schedule=schedule, weight=weight)

    grouped = map(group, (z_start, t_start, keys, text, text_mask, cond, cond_logsnr, guidance, null))
    out = over_trials(chunk, trials, in_axes=(0,) * 10 + (None,))(state, *grouped, eta)
    return out.reshape(-1, *out.shape[2:])


def frame_chunks(frames: int, chunk: int) -> list[slice]:
    """Consecutive frame ranges of `chunk` frames (0: one range) that tile `frames` exactly."""
    chunk = chunk or frames
    if frames % chunk:
        raise ValueError(f"Chunks of {chunk} frames do not tile {frames} frames.")
    return [slice(start, start + chunk) for start in range(0, frames, chunk)]


def sample_stage(
    model: nnx.Module,
    stage: Stage,
    text: jax.Array,
    text_mask: jax.Array,
    key: jax.Array,
    *,
    previous: jax.Array | None = None,
    x_start: jax.Array | None = None,
    s: jax.Array | float | None = None,
    guidance: jax.Array | float | None = None,
    schedule: Schedule = Schedule(),
    trials: Mesh | None = None,
) -> jax.Array:
    """Sample one stage → (B, frames, height, width, C) float32.

    The base stage starts from pure noise, or, given `x_start` (at the base size) and per-example
    times `s`, from `x_start` noised to `s` (Dreamix's edit). SR stages start from pure noise and
    are conditioned on `previous`, the preceding stage's output. Chunked stages sample each
    frame range with its own keys and concatenate the ranges in order.

    Given `trials` (a `make_trial_mesh` mesh), `model`'s weights are K copies stacked on a leading
    axis laid out over its trial axis (`sharding.stack_trials`) and the batch is K consecutive row
    groups, group k sampled with copy k, all in one program.
    """
    batch = text.shape[0]
    keys = example_keys(key, batch)
    start_keys, aug_keys, chunk_keys = _fold(keys, 0), _fold(keys, 1), _fold(keys, 2)
    channels = stage.unet.in_channels
    if x_start is None:
        x_start, s = jnp.zeros((batch, *stage.shape, channels), jnp.float32), 1.0
    elif stage.is_sr:
        raise ValueError(f"Stage {stage.name!r} is a super-resolution stage: only the base stage starts "
                         "from a given video.")
    elif x_start.shape != (batch, *stage.shape, channels):
        raise ValueError(f"x_start must have shape {(batch, *stage.shape, channels)} (the base stage's size; "
                         f"see cascade.degrade), got {x_start.shape}.")
    t_start = jnp.broadcast_to(jnp.asarray(s, jnp.float32), (batch,))
    z_start = start_from(x_start, start_keys, t_start, schedule)

    cond = cond_logsnr = None
    if stage.is_sr:
        if previous is None:
            raise ValueError(f"Stage {stage.name!r} needs the previous stage's video.")
        cond, cond_logsnr = augment_condition(upsample_condition(previous, stage), stage.cond_aug, aug_keys, schedule)

    # A stage sampled at its own weight of 1 (0) runs the conditional (unconditional) pass alone;
    # any given weight is traced, so a sweep over it shares one program.
    weight = stage.guidance if guidance is None and runs_one_pass(stage.guidance) else None
    guidance = jnp.asarray(stage.guidance if guidance is None else guidance, jnp.float32)
    graphdef, state = nnx.split(model)
    null = null_text(*text.shape)
    chunks = frame_chunks(stage.frames, stage.chunk)
    sample = _sample_chunk if trials is None else functools.partial(_sample_chunks, trials=trials)
    outputs = []
    for i, frames in enumerate(chunks):
        log.info("Sampling stage %s: frames %d–%d of %d.", stage.name, frames.start, frames.stop - 1, stage.frames)
        outputs.append(sample(
            graphdef, state, z_start[:, frames], t_start, _fold(chunk_keys, i), text, text_mask,
            None if cond is None else cond[:, frames], cond_logsnr, guidance, jnp.float32(stage.eta),
            null=null, num_steps=stage.steps, schedule=schedule, weight=weight))
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)


def sample_cascade(
    models: Sequence[nnx.Module],
    stages: Sequence[Stage],
    text: jax.Array,
    text_mask: jax.Array,
    key: jax.Array,
    *,
    x_start: jax.Array | None = None,
    s: jax.Array | float | None = None,
    guidance: jax.Array | float | None = None,
    schedule: Schedule = Schedule(),
    seconds: dict[str, float] | None = None,
    trials: Mesh | None = None,
    base_video: jax.Array | None = None,
) -> list[jax.Array]:
    """Run every stage in turn; returns each stage's video (the last is the cascade's output).

    `x_start`/`s` start the base stage from a noised video; `guidance` overrides the base stage's
    weight (SR stages keep their own). Given a `seconds` dict, each stage is waited for and its
    wall time recorded there. Given `trials`, every model holds K stacked copies and the batch K
    row groups (`sample_stage`). Given `base_video`, it stands in for the base stage's output (the
    base stage is not sampled), so the SR stages can be judged on inputs of known content.
    """
    if len(models) != len(stages):
        raise ValueError(f"{len(models)} models were given for {len(stages)} stages.")
    if base_video is not None and tuple(base_video.shape[1:4]) != stages[0].shape:
        raise ValueError(f"base_video is {tuple(base_video.shape[1:4])} (frames, height, width); the base stage "
                         f"makes {stages[0].shape}.")
    keys = example_keys(key, text.shape[0])
    videos: list[jax.Array] = []
    for i, (model, stage) in enumerate(zip(models, stages, strict=True)):
        base, start = stage.kind == "base", time.perf_counter()
        if base and base_video is not None:
            videos.append(jnp.asarray(base_video, jnp.float32))
            continue
        videos.append(sample_stage(
            model, stage, text, text_mask, _fold(keys, 100 + i), previous=videos[-1] if videos else None,
            x_start=x_start if base else None, s=s if base else None, guidance=guidance if base else None,
            schedule=schedule, trials=trials))
        if seconds is not None:
            jax.block_until_ready(videos[-1])
            seconds[stage.name] = round(time.perf_counter() - start, 2)
    return videos
