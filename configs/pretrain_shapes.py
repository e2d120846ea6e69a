r"""Pretraining one stage of the tiny cascade on the synthetic `shapes_video` clips.

Every stage reads prompts through the tiny T5 encoder at its seeded initialisation, frozen (no
pretrained T5 can be fetched here; its word-level tokens already tell the caption's attributes
apart), so all stages can train at once. Joint video–image training: the video path sees whole
clips with their captions, the frames path sees frames as independent images with motion-free
captions. `train.py` logs the conditioning probe (`dreamix_jax/probe.py`) every `probe_every` steps.

  python -m dreamix_jax.train --config configs/pretrain_shapes.py:base --workdir /tmp/shapes/base
  python -m dreamix_jax.train --config configs/pretrain_shapes.py:ssr1 --workdir /tmp/shapes/ssr1 \
      --config.text_encoder_from=/tmp/shapes/base

`text_encoder_from` may also name a cascade weights file. `init_from` warm-starts a fresh run from
a stage of a weights file or workdir; the shipped SR stages were warm-started from the previous
shipped file (whose encoder they replace by the base run's):

  python -m dreamix_jax.train --config configs/pretrain_shapes.py:tsr --workdir /tmp/shapes/tsr \
      --config.text_encoder_from=/tmp/shapes/base --config.init_from=<previous weights file> \
      --config.total_steps=600 --config.warmup_steps=20 --config.probe_every=200
"""

import ml_collections

from configs import cascade as cascade_configs
from configs import common

# (global batch, steps, training crop) per stage of the tiny cascade. SR stages learn from random
# (frames, pixels) windows: their job is local, and a window costs 1/8 (tsr) to 1/64 (ssr2) of a clip.
_BUDGET = {"base": (16, 4000, ()), "tsr": (16, 1500, (8, 8)), "ssr1": (16, 1500, (4, 16)),
           "ssr2": (16, 1200, (4, 16))}


def get_config(arg: str | None = "base") -> ml_collections.ConfigDict:
    """Config for one stage of `configs/cascade.py:tiny`; `arg` names the stage, optionally with `smoke`."""
    arg = common.parse_arg(arg, variant="base", smoke=False)
    config = ml_collections.ConfigDict()
    config.cascade = cascade_configs.get_config("tiny")
    if arg.variant not in config.cascade.stage_order:
        raise ValueError(f"Unknown stage {arg.variant!r}; choose one of {tuple(config.cascade.stage_order)}.")
    config.stage = arg.variant
    if arg.smoke and arg.variant == "base":
        # The smoke runs check the training loop (resume, checkpoints, logs, several hosts), and compiling
        # the step dominates their time on CPU and grows with the layer count: the base U-Net keeps
        # spatial, cross- and temporal attention and the position embedding, at one level of half the
        # width (two levels, attending at the second, compiled the step 15-25 % longer). (Exports of a
        # smoke run carry this config.)
        config.cascade.stages.base.unet.update(channels=(16,), attention_levels=(0,), temporal_attention_levels=(0,))

    config.data = dict(name="shapes_video", config="smoke" if arg.smoke else "tiny", data_dir="", split="train",
                       # Loader processes. 0 decodes in the training process, where the batches do not
                       # depend on the process count; an accelerator outruns that (one H200 took 220
                       # clips/s from it), so there give it a few per core to spare.
                       workers=0,
                       # Share of clips whose shape is painted a random colour, captioned with its nearest
                       # palette name and never a held-out pair (shapes_video.Recolor). 0.5 on ssr1 and
                       # ssr2 moved the cascade's shape reading within noise (README, "Why shape was
                       # capped"), so it is off.
                       recolor=0.0)
    # Sized for 2 CPU cores: the base stage gets most of the compute; SR stages mostly learn to
    # sharpen their conditioning video and converge quickly.
    batch, steps, crop = _BUDGET[arg.variant]
    config.batch_size = 4 if arg.smoke else batch  # global
    config.total_steps = 8 if arg.smoke else steps
    config.train_crop = () if arg.smoke else crop  # () trains on whole clips
    # Mixed objective: w_video · L_video + alpha · L_frames (a weight of 0 skips its program).
    config.w_video = 1.0
    config.alpha = 0.5
    # The base stage's frames path sees a quarter of each batch: the image skill at a quarter of its cost.
    config.frames_share = 0.25 if arg.variant == "base" and not arg.smoke else 1.0
    # Noise levels t = 1 − (1 − u)^p: the base stage decides what its prompt asks for at high noise
    # (below t ≈ 0.8 the noisy clip itself shows colour and motion), so it trains there more often.
    config.time_power = 2.0 if arg.variant == "base" else 1.0
    config.text_dropout = 0.1  # share of prompts replaced by the null condition (guidance)
    # The encoder stays at its (seeded) initialisation, frozen, as Imagen's T5 is: with one token per
    # caption word its outputs already tell every attribute apart, and every stage reads the same
    # embeddings from the start. The smoke variant trains it, to keep joint training covered.
    config.train_text_encoder = arg.smoke and arg.variant == "base"
    config.text_encoder_from = ""  # a base-stage workdir (or weights file) whose encoder an SR stage reads, frozen
    config.init_from = ""  # a weights file or workdir whose stage (and encoder) a fresh run starts from

    config.lr = 1e-3
    config.lr_schedule = "constant" if arg.variant == "base" else "cosine"  # the base run is stopped, not finished
    config.warmup_steps = 2 if arg.smoke else 100
    config.weight_decay = 0.0
    config.grad_clip = 1.0
    config.ema_decay = 0.0 if arg.smoke else 0.995  # 0 keeps no EMA copy

    config.checkpoint_every = 4 if arg.smoke else 100
    config.keep_checkpoints = 2
    config.log_every = 1 if arg.smoke else 25
    # The conditioning probe (dreamix_jax/probe.py): caption-swap error gaps on fixed test clips.
    config.probe_every = 0 if arg.smoke else 100
    config.probe_clips = 16
    config.seed = 0
    config.mesh = dict(shape=(-1, 1, 1))
    config.distributed = False
    return config
