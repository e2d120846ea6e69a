r"""Single U-Net configs: a tiny one for tests and a base-model-sized one for shape and memory checks.

  tiny         4 frames × 8 × 8, two levels; what the test-suite builds.
  imagen_base  16 frames × 24 × 40 (Imagen Video's base resolution), ~1.3B parameters, T5-XXL
               text width; compiled for memory only, never trained here.

Print a config, or measure parameters, FLOPs, compile time and memory of both:

  python -c "from configs import unet; print(unet.get_config('imagen_base'))"
  python benchmarks/unet_step.py
"""

import ml_collections

from configs import common

VARIANTS = ("tiny", "imagen_base")


def get_config(arg: str | None = "tiny") -> ml_collections.ConfigDict:
    """Config for one U-Net; `arg` is a variant name, optionally with `runlocal`."""
    arg = common.parse_arg(arg, variant="tiny", runlocal=False)
    if arg.variant not in VARIANTS:
        raise ValueError(f"Unknown U-Net variant {arg.variant!r}; choose one of {VARIANTS}.")
    config = ml_collections.ConfigDict()
    config.variant = arg.variant

    if arg.variant == "tiny":
        config.video = dict(frames=4, height=8, width=8, channels=3)
        config.text = dict(length=5, dim=8)
        config.model = dict(
            channels=(16, 32), num_res_blocks=1, num_heads=2, num_groups=4,
            attention_levels=(1,), temporal_attention_levels=(0, 1), text_dim=8)
        config.batch_size = 2
    else:
        # Imagen Video's base model works at 16 × 24 × 40 with temporal attention; four levels
        # take 24 × 40 down to 3 × 5. Widths give ~1.3B parameters (the paper does not list them).
        config.video = dict(frames=16, height=24, width=40, channels=3)
        config.text = dict(length=64, dim=4096)  # T5-XXL embeddings
        config.model = dict(
            channels=(320, 640, 960, 1280), num_res_blocks=3, num_heads=20, num_groups=32,
            attention_levels=(1, 2, 3), temporal_attention_levels=(0, 1, 2, 3), text_dim=4096,
            param_dtype="float32", dtype="bfloat16", remat=False)
        config.batch_size = 1 if arg.runlocal else 64
    config.model.dropout = 0.0

    # The diffusion process (continuous-time cosine log-SNR schedule).
    config.schedule = dict(logsnr_min=-20.0, logsnr_max=20.0, shift=0.0)
    # Mesh (data, fsdp, tensor); -1 takes every remaining device.
    config.mesh = dict(shape=(-1, 1, 1))
    # True on a multi-host pod: jax.distributed.initialize() runs first (see sharding.py).
    config.distributed = False
    config.seed = 0
    return config
