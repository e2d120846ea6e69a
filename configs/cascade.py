r"""Cascade configs: a tiny four-stage cascade and the paper-scale seven-stage Imagen Video cascade.

  tiny          base 8×16×16 @ 4 fps → TSR 16×16×16 @ 8 fps → SSR 16×32×32 → SSR 16×64×64, small
                widths and the tiny T5 (word-level tokens); what the tests and the shipped model use.
  imagen_video  base 16×24×40 @ 3 fps → TSR ×2 → SSR ×2 → SSR ×4 → TSR ×2 → TSR ×2 → SSR ×4,
                ending at 128×768×1280 @ 24 fps, T5-XXL text; ~11.6B diffusion parameters.
                Compiled for memory plans only (benchmarks/cascade_memory.py), never trained here.

Stages run in `stage_order`; each `stages.<name>` holds its sizes, U-Net and sampling settings,
so a command line can override one stage: `--config.stages.base.steps=64`.

Print the parameters of every stage:

  python -m configs.cascade imagen_video
"""

import sys

import ml_collections

from configs import common
from configs import t5 as t5_configs

VARIANTS = ("tiny", "imagen_video")


def _stage(kind: str, frames: int, height: int, width: int, fps: float, previous: dict | None, unet: dict,
           **settings) -> dict:
    """One stage's config: output size, input size (the previous stage's output), U-Net, settings."""
    source = previous or dict(frames=frames, height=height, width=width, fps=fps)
    unet = dict(unet, cond_channels=0 if kind == "base" else 3)
    return dict(kind=kind, frames=frames, height=height, width=width, fps=fps, in_frames=source["frames"],
                in_height=source["height"], in_width=source["width"], in_fps=source["fps"], unet=unet, **settings)


def _chain(*specs: tuple[str, str, int, int, int, float, dict, dict]) -> tuple[tuple[str, ...], dict]:
    """(name, kind, frames, height, width, fps, unet, settings) in order → (stage_order, stages)."""
    stages, previous = {}, None
    for name, kind, frames, height, width, fps, unet, settings in specs:
        stages[name] = previous = _stage(kind, frames, height, width, fps, previous, unet, **settings)
    return tuple(s[0] for s in specs), stages


def get_config(arg: str | None = "tiny") -> ml_collections.ConfigDict:
    """Config for one cascade; `arg` is a variant name."""
    arg = common.parse_arg(arg, variant="tiny")
    if arg.variant not in VARIANTS:
        raise ValueError(f"Unknown cascade variant {arg.variant!r}; choose one of {VARIANTS}.")
    config = ml_collections.ConfigDict()
    config.variant = arg.variant

    if arg.variant == "tiny":
        config.text = t5_configs.get_config("tiny")
        text = dict(text_dim=config.text.model.d_model, num_heads=2, num_groups=8)
        # The base model attends in space and time and reads the text at both of its levels (one
        # cross-attention level at 8×8 left its shape and motion words unread); SR models use temporal convolutions only,
        # and the last SSR is fully convolutional (no attention at all). SR stages train and
        # sample without conditioning augmentation: trained on conditioning noised up to t = 0.2, they
        # rounded the corners of even true clips' squares (tsr, whose even frames are its conditioning
        # frames, included), and the cascade read shape in 51.6 % of its samples against 62.5 % without
        # (README, "Why shape was capped"). Blurring the conditioning in training (`train_cond_blur`:
        # σ up to 1 or 2 input pixels) did not help either, so it is off too.
        sr = dict(cond_aug=0.0, train_cond_aug=0.0, train_cond_blur=0.0)
        order, stages = _chain(
            ("base", "base", 8, 16, 16, 4, dict(channels=(32, 64), attention_levels=(0, 1),
                                                  temporal_attention_levels=(0, 1), position_embedding=True,
                                                  **text),
             dict(steps=32, guidance=3.0, finetune=True)),
            ("tsr", "tsr", 16, 16, 16, 8, dict(channels=(32, 64), attention_levels=(1,),
                                                 temporal_attention_levels=(), **text),
             dict(steps=16, temporal_up="linear", **sr)),
            ("ssr1", "ssr", 16, 32, 32, 8, dict(channels=(32, 64), attention_levels=(1,),
                                                  temporal_attention_levels=(), **text),
             dict(steps=16, finetune=True, **sr)),
            ("ssr2", "ssr", 16, 64, 64, 8, dict(channels=(16, 32, 64), attention_levels=(),
                                                  temporal_attention_levels=(), **text),
             dict(steps=8, chunk=8, finetune=True, **sr)),
        )
    else:
        config.text = t5_configs.get_config("xxl")
        common_unet = dict(text_dim=4096, num_res_blocks=3, num_groups=32, param_dtype="float32",
                           dtype="bfloat16", remat=True)
        sr = dict(common_unet, temporal_attention_levels=())
        order, stages = _chain(
            ("base", "base", 16, 24, 40, 3,
             dict(common_unet, channels=(640, 1280, 1920, 2560), attention_levels=(1, 2, 3),
                  temporal_attention_levels=(0, 1, 2, 3), num_heads=40),
             dict(steps=256, guidance=7.0, finetune=True)),
            ("tsr1", "tsr", 32, 24, 40, 6,
             dict(sr, channels=(448, 896, 1344, 1792), attention_levels=(2, 3), num_heads=32),
             dict(steps=128, guidance=7.0, cond_aug=0.1, temporal_up="linear")),
            ("ssr1", "ssr", 32, 48, 80, 6,
             dict(sr, channels=(256, 512, 1024, 2048), attention_levels=(3,), num_heads=32),
             dict(steps=128, guidance=5.0, cond_aug=0.1, finetune=True)),
            ("ssr2", "ssr", 32, 192, 320, 6,
             dict(sr, channels=(128, 256, 512, 1024, 1536), attention_levels=(4,), num_heads=16),
             dict(steps=64, guidance=3.0, cond_aug=0.1, finetune=True)),
            ("tsr2", "tsr", 64, 192, 320, 12,
             dict(sr, channels=(128, 256, 512, 1024, 1024), attention_levels=(4,), num_heads=16),
             dict(steps=64, guidance=3.0, cond_aug=0.1, temporal_up="linear")),
            ("tsr3", "tsr", 128, 192, 320, 24,
             dict(sr, channels=(128, 256, 512, 768, 1024), attention_levels=(4,), num_heads=16),
             dict(steps=32, guidance=1.0, cond_aug=0.1, temporal_up="linear", chunk=32)),
            ("ssr3", "ssr", 128, 768, 1280, 24,
             dict(sr, channels=(64, 128, 256, 512, 512, 768), attention_levels=()),
             dict(steps=32, guidance=1.0, cond_aug=0.1, chunk=32)),
        )
    config.stage_order = order
    config.stages = stages
    # The diffusion process (continuous-time cosine log-SNR schedule), shared by every stage.
    config.schedule = dict(logsnr_min=-20.0, logsnr_max=20.0, shift=0.0)
    config.mesh = dict(shape=(-1, 1, 1))
    config.seed = 0
    return config


def main(argv: list[str]) -> None:
    """Print the parameter count of every stage of a variant (from abstract shapes, nothing allocated)."""
    from flax import nnx

    from dreamix_jax.cascade import stages_from_config
    from dreamix_jax.models.unet3d import UNet3D, param_count

    config = get_config(argv[1] if len(argv) > 1 else "tiny")
    total = 0
    print(f"{'stage':<6} {'kind':<5} {'output':<16} {'fps':>4} {'chunk':>5} {'finetune':>8} {'parameters':>15}")
    for stage in stages_from_config(config):
        params = param_count(nnx.eval_shape(lambda stage=stage: UNet3D(stage.unet, rngs=nnx.Rngs(0))))
        total += params
        size = "×".join(map(str, stage.shape))
        print(f"{stage.name:<6} {stage.kind:<5} {size:<16} {stage.fps:>4g} {stage.chunk or '-':>5} "
              f"{str(stage.finetune):>8} {params:>15,}", flush=True)
    print(f"{'total':<48} {total:>15,}")


if __name__ == "__main__":
    main(sys.argv)
