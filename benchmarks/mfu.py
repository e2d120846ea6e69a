r"""MFU of the paper-scale base-stage finetuning step on one accelerator, with and without remat.

The step is Dreamix's finetuning step of the `configs/cascade.py:imagen_video` base U-Net
(4.7B parameters, 16 × 24 × 40 video, T5-XXL text of 128 tokens, bf16 compute, float32 weights,
AdamW), built as `dreamix_jax/dreamix.py` builds it: `objective.make_train_step` over the mixed
objective's paths (video + frames; `--paths video` for the plain denoising step). For each
rematerialisation variant:

  none      no remat
  full      remat of every U-Net block (the config's `remat=True`): only block inputs are kept
  dots      block remat that keeps matmul outputs without batch dims (q/k/v/out and dense
            projections): jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  convs     block remat that keeps those and every convolution output; norms, activations and
            the attention core are recomputed

it finds the largest power-of-two batch that fits one device (compiled ahead of time from abstract
shapes; `memory_analysis()` against the device's memory limit; a real out-of-memory halves it),
then times the step (median after warm-up) and reports model TFLOP/s and MFU, XLA's
`cost_analysis()` TFLOP/s (which include the recomputation) and peak memory.

Model FLOPs are counted from the no-remat step's jaxpr (matmuls and convolutions, forward and
backward; `benchmarks/flops.py`), so recomputation is not credited. MFU divides by the device's
dense bf16 peak (table below); an unknown device prints n/a.

The block policies (`dots`, `convs`) are applied by swapping the remat wrapper of
`dreamix_jax/models/unet3d.py` inside this script: `UNet3DConfig.remat` is all-or-nothing.

On CPU only `--tiny` runs (the tiny cascade's base U-Net): the script is exercised here, the
paper-scale numbers need an accelerator. `--plan` compiles the paper-scale step on any host and
prints the memory its plan needs per variant and batch (minutes per compile on CPU, no device).

  python benchmarks/mfu.py                                  # on a GPU/TPU host
  python benchmarks/mfu.py --variants none,full --max_batch 8
  python benchmarks/mfu.py --variants full --batch 8          # one compile when batch 8 fits
  python benchmarks/mfu.py --variants none --res_blocks 1   # paper widths, one block per level: a shorter compile
  python benchmarks/mfu.py --tiny --repeats 2               # CPU smoke run
  python benchmarks/mfu.py --plan 1,4 --out plan.json       # compile-time memory only, on any host
"""

import argparse
import contextlib
import dataclasses
import os
import pathlib
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from configs import cascade as cascade_configs  # noqa: E402
from flops import count_flops  # noqa: E402
from results_io import write_json  # noqa: E402
from dreamix_jax import objective  # noqa: E402
from dreamix_jax.cascade import stages_from_config  # noqa: E402
from dreamix_jax.models import unet3d  # noqa: E402
from dreamix_jax.models.unet3d import UNet3D, param_count  # noqa: E402

GIB = 2**30

# Dense bf16 peak per chip, TFLOP/s; first match on the device kind wins.
PEAK_BF16_TFLOPS = (
    (r"H100.*PCIe", 756.0),
    (r"H100|H200|GH200", 989.0),
    (r"A100", 312.0),
    (r"TPU v4", 275.0),
    (r"TPU v5 ?(lite|e)", 197.0),
    (r"TPU v5", 459.0),  # v5p reports "TPU v5" or "TPU v5p"
    (r"TPU v6", 918.0),
)


def _save_convs_and_projections(prim, *args, **params) -> bool:
    """Keep convolution outputs and batch-free matmul outputs; recompute the rest."""
    return prim.name == "conv_general_dilated" or jax.checkpoint_policies.dots_with_no_batch_dims_saveable(
        prim, *args, **params)


# variant -> (config remat flag, block policy; None = the module's own wrapper)
VARIANTS = {
    "none": (False, None),
    "full": (True, None),
    "dots": (True, jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
    "convs": (True, _save_convs_and_projections),
}


def peak_tflops(device_kind: str) -> float | None:
    """Dense bf16 peak of a device, or None when unknown."""
    for pattern, peak in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_kind, re.I):
            return peak
    return None


@contextlib.contextmanager
def block_remat_policy(policy):
    """Trace U-Net blocks under `nnx.remat(..., policy=policy)` instead of the module's plain remat."""
    if policy is None:
        yield
        return
    saved = unet3d._apply_block_remat
    unet3d._apply_block_remat = nnx.remat(unet3d._apply_block, static_argnums=(5,), policy=policy)
    try:
        yield
    finally:
        unet3d._apply_block_remat = saved


def base_stage(tiny: bool, dtype: str, res_blocks: int = 0):
    """(U-Net config, (frames, height, width), (text length, width)) of the cascade's base stage, with
    `res_blocks` residual blocks per level where given (0: the config's)."""
    config = cascade_configs.get_config("tiny" if tiny else "imagen_video")
    stage = stages_from_config(config)[0]
    cfg = dataclasses.replace(stage.unet, dtype=dtype, remat=False,
                              num_res_blocks=res_blocks or stage.unet.num_res_blocks)
    return cfg, stage.shape, (config.text.max_length, cfg.text_dim)


def abstract_batch(batch: int, video: tuple[int, int, int], text: tuple[int, int], channels: int) -> dict:
    """ShapeDtypeStructs of a finetuning batch."""
    f32 = jnp.float32
    return dict(video=jax.ShapeDtypeStruct((batch, *video, channels), f32),
                text=jax.ShapeDtypeStruct((batch, *text), f32),
                text_mask=jax.ShapeDtypeStruct((batch, text[0]), f32))


def peak_bytes(compiled) -> int:
    """Compile-time peak of one program: arguments + outputs + temporaries − donated aliases."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


class Bench:
    """The model's state (materialised once, shared by every variant) and the step builders."""

    def __init__(self, cfg, video, text, paths):
        self.cfg, self.video, self.text, self.paths = cfg, video, text, tuple(paths)
        self.optimizer = objective.make_optimizer()
        model = nnx.eval_shape(lambda: UNet3D(cfg, rngs=nnx.Rngs(0)))
        self.n_params = param_count(model)
        _, self.abstract_params, self.abstract_rest = nnx.split(model, nnx.Param, ...)
        self.abstract_opt = jax.eval_shape(self.optimizer.init, self.abstract_params)
        self.state = None

    def step_fn(self, remat: bool):
        """The un-jitted finetuning step of the U-Net with this remat flag."""
        graphdef = nnx.split(nnx.eval_shape(lambda: UNet3D(dataclasses.replace(self.cfg, remat=remat),
                                                           rngs=nnx.Rngs(0))))[0]
        return objective.make_train_step(graphdef, self.optimizer, paths=self.paths)

    def args(self, batch: int, abstract: bool = True) -> tuple:
        """(params, opt_state, rest, batch, key); abstract shapes or real arrays."""
        data = abstract_batch(batch, self.video, self.text, self.cfg.in_channels)
        if abstract:
            key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
            return self.abstract_params, self.abstract_opt, self.abstract_rest, data, key
        if self.state is None:  # materialise on the device, once
            params, rest = jax.jit(lambda: nnx.split(UNet3D(self.cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)[1:])()
            self.state = [params, jax.jit(self.optimizer.init)(params), rest]
        keys = jax.random.split(jax.random.key(1), 2)
        real = dict(video=jax.random.normal(keys[0], data["video"].shape),
                    text=jax.random.normal(keys[1], data["text"].shape),
                    text_mask=jnp.ones(data["text_mask"].shape))
        return (*self.state, real, jax.random.key(0))

    def model_flops(self, batch: int) -> int:
        """Matmul + conv FLOPs of the no-remat step at batch 1, times `batch` (all of them scale with it)."""
        return count_flops(self.step_fn(False), *self.args(1)) * batch


def compile_variant(bench: Bench, variant: str, batch: int):
    """(compiled step, compile seconds) from abstract shapes."""
    remat, policy = VARIANTS[variant]
    step = jax.jit(bench.step_fn(remat), donate_argnums=(0, 1))
    with block_remat_policy(policy):
        lowered = step.lower(*bench.args(batch))
    start = time.perf_counter()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start


def time_compiled(bench: Bench, compiled, batch: int, warmup: int, repeats: int) -> list[float]:
    """Seconds per step of a compiled step on real arrays; the state is threaded through (donated)."""
    params, opt_state, rest, data, key = bench.args(batch, abstract=False)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        params, opt_state, loss, _ = compiled(params, opt_state, rest, data, jax.random.fold_in(key, i))
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    bench.state[:2] = params, opt_state
    return times[warmup:]


def _is_oom(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def _compile_if_fits(bench: Bench, variant: str, batch: int, limit: int | None):
    """(batch, compiled, compile s, planned bytes) when the step compiles within `limit`, else None."""
    try:
        compiled, compile_s = compile_variant(bench, variant, batch)
    except Exception as e:  # noqa: BLE001 - XLA reports OOM at compile time on some backends
        if not _is_oom(e):
            raise
        return None
    est = peak_bytes(compiled)
    return None if limit is not None and est > limit else (batch, compiled, compile_s, est)


def fitting_steps(bench: Bench, variant: str, args, limit: int | None) -> list[tuple]:
    """Compiled steps that fit, largest batch last: doubling from 1, or halving from `--batch`.

    Each try is a compile, minutes at the paper's size: `--batch` near the answer saves most of them.
    """
    if args.batch:
        batch = args.batch
        while batch >= 1:
            if fit := _compile_if_fits(bench, variant, batch, limit):
                return [fit]
            batch //= 2
        return []
    fits, batch = [], 1
    while batch <= args.max_batch and (fit := _compile_if_fits(bench, variant, batch, limit)):
        fits.append(fit)
        batch *= 2
    return fits


def measure(bench: Bench, variant: str, args, limit: int | None, model_flops_1: int, peak: float | None) -> dict:
    """Largest fitting batch of one variant, then its timing and FLOP rates."""
    fits = fitting_steps(bench, variant, args, limit)
    while fits:
        batch, compiled, compile_s, est = fits[-1]
        try:
            times = time_compiled(bench, compiled, batch, args.warmup, args.repeats)
            break
        except Exception as e:  # noqa: BLE001
            if not _is_oom(e):
                raise
            fits.pop()  # fits on paper, not in practice (fragmentation, runtime buffers): a smaller one
            bench.state = None
            if not fits and batch > 1 and (fit := _compile_if_fits(bench, variant, batch // 2, limit)):
                fits.append(fit)
    if not fits:
        return dict(variant=variant, batch=0, note="batch 1 does not fit")
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    step_s = statistics.median(times)
    model_flops = model_flops_1 * batch
    xla_flops = float(cost.get("flops", float("nan")))
    stats = jax.devices()[0].memory_stats() or {}
    row = dict(variant=variant, batch=batch, step_s=step_s, step_s_all=times, compile_s=compile_s,
               model_tflop_per_step=model_flops / 1e12, xla_tflop_per_step=xla_flops / 1e12,
               model_tflops_per_s=model_flops / step_s / 1e12, xla_tflops_per_s=xla_flops / step_s / 1e12,
               mfu=(model_flops / step_s / 1e12 / peak) if peak else None,
               est_peak_gib=est / GIB, runtime_peak_gib=stats.get("peak_bytes_in_use", 0) / GIB or None,
               batches_tried=[f[0] for f in fits])
    return row


def plan_memory(bench: Bench, variants: list[str], batches: list[int], out: str) -> None:
    """Compile-time memory of each variant at each batch, from abstract shapes: what a device must hold."""
    print(f"{'variant':<7} {'batch':>5} {'planned GiB':>11} {'arguments GiB':>13} {'temporaries GiB':>15} "
          f"{'compile s':>9}", flush=True)
    rows = []
    for variant in variants:
        for batch in batches:
            compiled, compile_s = compile_variant(bench, variant, batch)
            m = compiled.memory_analysis()
            rows.append(dict(variant=variant, batch=batch, planned_gib=peak_bytes(compiled) / GIB,
                             argument_gib=m.argument_size_in_bytes / GIB, temp_gib=m.temp_size_in_bytes / GIB,
                             compile_s=compile_s))
            r = rows[-1]
            print(f"{variant:<7} {batch:>5} {r['planned_gib']:>11.1f} {r['argument_gib']:>13.1f} "
                  f"{r['temp_gib']:>15.1f} {compile_s:>9.0f}", flush=True)
    meta = dict(params=bench.n_params, res_blocks=bench.cfg.num_res_blocks, backend=jax.default_backend(),
                jax=jax.__version__, plan_only=True)
    print(f"wrote {write_json(out, dict(meta=meta, rows=rows))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny cascade's base U-Net (CPU smoke run)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--paths", default="video,frames", help="objective paths: video,frames (Dreamix) or video")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype (weights stay float32)")
    parser.add_argument("--res_blocks", type=int, default=0,
                        help="residual blocks per level (0: the config's, 3 at paper scale); fewer keep "
                        "every width, attention and text size, and compile in a fraction of the time")
    parser.add_argument("--max_batch", type=int, default=0, help="largest batch tried (0: 64, or 2 on CPU)")
    parser.add_argument("--batch", type=int, default=0,
                        help="first batch tried, halved until the step fits (0: double from 1 up to --max_batch)")
    parser.add_argument("--plan", default="", help="comma-separated batches: compile each variant at each "
                        "and print its planned memory only (no device memory needed; runs on CPU)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory_fraction", type=float, default=0.95,
                        help="fraction of the device's memory limit a compiled step may plan to use")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "mfu.json"))
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    backend, device = jax.default_backend(), jax.devices()[0]
    if backend == "cpu" and not args.tiny and not args.plan:
        sys.exit("The paper-scale step (4.7B parameters) needs an accelerator; on CPU run with --tiny, "
                 "or --plan for its compile-time memory.")
    args.max_batch = args.max_batch or (2 if backend == "cpu" else 64)

    if args.res_blocks < 0:
        parser.error(f"--res_blocks is {args.res_blocks}; give 0 (the config's) or a positive count")
    cfg, video, text = base_stage(args.tiny, args.dtype, args.res_blocks)
    bench = Bench(cfg, video, text, args.paths.split(","))
    peak = peak_tflops(device.device_kind)
    stats = device.memory_stats() or {}
    limit = int(stats["bytes_limit"] * args.memory_fraction) if "bytes_limit" in stats else None
    print(f"{'tiny' if args.tiny else 'imagen_video'} base U-Net ({cfg.num_res_blocks} res blocks per level): "
          f"{bench.n_params / 1e9:.3f}B parameters, "
          f"video {video}, text {text}, {args.dtype} compute, paths {bench.paths}; device {device.device_kind} "
          f"({backend}), peak bf16 {f'{peak:g} TFLOP/s' if peak else 'unknown'}, memory limit "
          f"{f'{limit / GIB:.1f} GiB' if limit else 'none (batch capped at --max_batch)'}"
          + (f"; note: {args.note}" if args.note else "")
          + (f"; XLA_FLAGS={os.environ['XLA_FLAGS']}" if os.environ.get("XLA_FLAGS") else ""), flush=True)
    if backend == "cpu" and not args.plan:
        print("CPU smoke run at the tiny size: the paper-scale numbers need an accelerator "
              "(python benchmarks/mfu.py on a GPU/TPU host).", flush=True)
    if args.plan:
        plan_memory(bench, variants, [int(b) for b in args.plan.split(",")], args.out)
        return
    model_flops_1 = bench.model_flops(1)
    print(f"model FLOPs per example (matmul + conv, forward + backward, no recomputation): "
          f"{model_flops_1 / 1e12:.4f} TFLOP", flush=True)

    header = (f"{'variant':<7} {'batch':>5} {'step s':>8} {'model TF/step':>13} {'XLA TF/step':>11} "
              f"{'model TF/s':>10} {'XLA TF/s':>9} {'MFU':>6} {'est peak GiB':>12} {'run peak GiB':>12} "
              f"{'compile s':>9}")
    print(header, flush=True)
    rows = []
    for variant in variants:
        row = measure(bench, variant, args, limit, model_flops_1, peak)
        rows.append(row)
        if not row["batch"]:
            print(f"{variant:<7} {'-':>5}  {row['note']}", flush=True)
            continue
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        run_peak = f"{row['runtime_peak_gib']:.2f}" if row["runtime_peak_gib"] else "n/a"
        print(f"{variant:<7} {row['batch']:>5} {row['step_s']:>8.3f} {row['model_tflop_per_step']:>13.4f} "
              f"{row['xla_tflop_per_step']:>11.4f} {row['model_tflops_per_s']:>10.4f} {row['xla_tflops_per_s']:>9.4f} "
              f"{mfu:>6} {row['est_peak_gib']:>12.3f} {run_peak:>12} {row['compile_s']:>9.1f}", flush=True)
    print("est peak: compiled memory_analysis (args + outputs + temps − donated); run peak: the device's "
          "peak_bytes_in_use so far in this process (a running maximum over the variants).")

    meta = dict(model="tiny" if args.tiny else "imagen_video", res_blocks=cfg.num_res_blocks, params=bench.n_params,
                video=list(video), text=list(text), dtype=args.dtype, paths=list(bench.paths), backend=backend,
                device=device.device_kind, peak_bf16_tflops=peak, memory_limit_gib=limit / GIB if limit else None,
                model_tflop_per_example=model_flops_1 / 1e12, jax=jax.__version__, cpu_count=os.cpu_count(),
                repeats=args.repeats, note=args.note, xla_flags=os.environ.get("XLA_FLAGS", ""),
                remat_policies="dots/convs applied by swapping unet3d._apply_block_remat in this script")
    print(f"wrote {write_json(args.out, dict(meta=meta, rows=rows))}")


if __name__ == "__main__":
    main()
