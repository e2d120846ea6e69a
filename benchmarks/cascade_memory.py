r"""The TPU memory plan of the paper-scale cascade, compiled ahead of time.

For every stage of `configs/cascade.py:imagen_video` it compiles, from abstract shapes (nothing
is allocated):

  finetune  the Dreamix step of the stages Dreamix finetunes: both objectives (video path and
            frames path) in one AdamW step, bfloat16 compute, per-block rematerialisation,
            float32 weights, gradients and Adam state sharded by the logical-axis rules;
            batch 1 on a v5e-16 (16 chips);
  sample    one guided DDIM step (conditional and unconditional U-Net passes) over the stage's
            frame chunk, batch 1, on a v5e-8 (8 chips);

and prints per-chip peak memory (`memory_analysis()`: arguments + outputs + temporaries −
aliased), FLOPs per step (XLA's count for one chip's program × chips) and the mesh used.

With `libtpu` installed (`pip install "libtpu==0.0.42.*"`) the target is a real TPU topology
(`jax.experimental.topologies`); without it, the emulated CPU mesh stands in (its memory
figures differ from a TPU's: see the README).

  python benchmarks/cascade_memory.py                       # table + benchmarks/results/cascade_memory.json
  python benchmarks/cascade_memory.py --variant tiny --stages base

Rows already in the JSON file are kept and not compiled again (a TPU compile of a paper-scale
stage takes 5–20 minutes on a small host); `--fresh` starts over.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=16"

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import cascade as cascade_configs  # noqa: E402
from results_io import write_json  # noqa: E402
from dreamix_jax import sharding  # noqa: E402
from dreamix_jax.cascade import stages_from_config  # noqa: E402
from dreamix_jax.diffusion import guided_denoiser  # noqa: E402
from dreamix_jax.models.t5 import null_text  # noqa: E402
from dreamix_jax.models.unet3d import UNet3D  # noqa: E402
from dreamix_jax.objective import make_train_step  # noqa: E402

GIB = 2**30
HBM_GIB = {"v5e": 16}
# (program, TPU topology, chips, mesh (data, fsdp, tensor)). Batch 1 cannot split over the data
# axes, so activations are sharded only where `tensor` splits channels and heads.
PLANS = {
    "finetune": ("v5e:4x4", 16, (1, 4, 4)),
    "sample": ("v5e:2x4", 8, (1, 1, 8)),
}


def target_devices(topology: str, chips: int):
    """TPU devices of `topology` (AOT, needs libtpu), else the first `chips` emulated CPU devices."""
    try:
        from jax.experimental import topologies

        return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices, f"TPU {topology}"
    except Exception as e:  # no libtpu, or one that does not match this jax
        print(f"TPU topology {topology} unavailable ({type(e).__name__}); using the emulated CPU mesh", flush=True)
        return jax.devices()[:chips], f"{chips} emulated CPU devices"


def abstract(shape, dtype, mesh, names):
    """An abstract array sharded by logical names (a dimension the mesh does not divide is replicated)."""
    spec = sharding.logical_to_spec(names, shape, mesh)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def inputs(stage, mesh, frames: int, text_len: int, text_dim: int) -> dict:
    """Abstract batch-1 inputs of one stage: video, text, mask and (SR stages) the conditioning video."""
    video = (1, frames, stage.height, stage.width, stage.unet.in_channels)
    names = ("batch", None, None, None, None)
    batch = dict(video=abstract(video, jnp.float32, mesh, names),
                 text=abstract((1, text_len, text_dim), jnp.float32, mesh, ("batch", None, None)),
                 text_mask=abstract((1, text_len), jnp.bool_, mesh, ("batch", None)))
    if stage.is_sr:
        batch["cond"] = abstract(video[:-1] + (stage.unet.cond_channels,), jnp.float32, mesh, names)
    return batch


def compile_finetune(stage, mesh, text_len, text_dim):
    graphdef, state = sharding.abstract_sharded(lambda: UNet3D(stage.unet, rngs=nnx.Rngs(0)), mesh)
    params, rest = nnx.split_state(state, nnx.Param, ...)
    optimizer = optax.adamw(1e-5)
    opt_state = jax.eval_shape(optimizer.init, params)  # Adam moments follow their weights' sharding
    step = make_train_step(graphdef, optimizer, paths=("video", "frames"), cond_aug_max=stage.train_cond_aug)
    batch = inputs(stage, mesh, stage.frames, text_len, text_dim)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    weights = jax.ShapeDtypeStruct((2,), jnp.float32)
    with jax.set_mesh(mesh):
        return jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, rest, batch, key, weights).compile()


def compile_sample(stage, mesh, text_len, text_dim):
    graphdef, state = sharding.abstract_sharded(lambda: UNet3D(stage.unet, rngs=nnx.Rngs(0)), mesh)
    frames = stage.chunk or stage.frames
    batch = inputs(stage, mesh, frames, text_len, text_dim)
    logsnr = jax.ShapeDtypeStruct((1,), jnp.float32)

    # The unconditional text is an input, as in `cascade._sample_chunk`: as a constant, its all-False
    # mask lets XLA fold the masked attention at compile time, which sampling never does.
    null = jax.tree.map(lambda a: abstract(a.shape, a.dtype, mesh, ("batch",) + (None,) * (a.ndim - 1)),
                        null_text(1, text_len, text_dim))

    def guided_v(state, batch, null, logsnr, guidance):
        model = nnx.merge(graphdef, state)
        null, null_mask = null
        cond = batch.get("cond")
        cond_logsnr = logsnr if cond is not None else None

        def model_fn(z, lsnr, conditional):
            text, mask = (batch["text"], batch["text_mask"]) if conditional else (null, null_mask)
            return model(z, lsnr, text, mask, cond=cond, cond_logsnr=cond_logsnr)

        return guided_denoiser(model_fn, guidance)(batch["video"], logsnr)

    guidance = jax.ShapeDtypeStruct((), jnp.float32)
    with jax.set_mesh(mesh):
        return jax.jit(guided_v).lower(state, batch, null, logsnr, guidance).compile()


def measure(program: str, stage, text_len: int, text_dim: int) -> dict:
    topology, chips, mesh_shape = PLANS[program]
    devices, label = target_devices(topology, chips)
    mesh = sharding.make_mesh(mesh_shape, devices[:chips])
    start = time.perf_counter()
    row = dict(program=program, stage=stage.name, target=label, chips=chips, mesh=list(mesh_shape),
               frames=stage.chunk or stage.frames if program == "sample" else stage.frames)
    try:
        compiled = (compile_finetune if program == "finetune" else compile_sample)(stage, mesh, text_len, text_dim)
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler refuses a program that cannot fit; it says how much it would need.
        needed = re.search(r"HLO temporaries \(([\d.]+)G\)", str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or needed is None:
            raise
        return {**row, "peak_gib": None, "temp_gib": float(needed.group(1)), "arguments_gib": None,
                "tflop_per_step": None, "compile_seconds": time.perf_counter() - start, "fits_v5e": False}
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return dict(row, peak_gib=peak / GIB, arguments_gib=m.argument_size_in_bytes / GIB, temp_gib=m.temp_size_in_bytes / GIB,
                tflop_per_step=float(cost.get("flops", 0.0)) * chips / 1e12, compile_seconds=seconds,
                fits_v5e=peak / GIB <= HBM_GIB["v5e"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="imagen_video", choices=cascade_configs.VARIANTS)
    parser.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    parser.add_argument("--programs", default="finetune,sample")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "cascade_memory.json"))
    parser.add_argument("--fresh", action="store_true", help="measure every row again")
    args = parser.parse_args()

    config = cascade_configs.get_config(args.variant)
    stages = stages_from_config(config)
    wanted = set(filter(None, args.stages.split(","))) or {s.name for s in stages}
    text_len, text_dim = config.text.max_length, config.text.model.d_model
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if out.exists() and not args.fresh:
        previous = json.loads(out.read_text())
        if previous["meta"]["variant"] == args.variant:
            rows = previous["rows"]
    header = (f"{'program':<9} {'stage':<6} {'target':<26} {'mesh':<7} {'frames':>6} {'peak GiB':>9} "
              f"{'args GiB':>9} {'temp GiB':>9} {'TFLOP/step':>11} {'fits 16G':>8} {'compile s':>9}")
    print(header, flush=True)
    print("-" * len(header), flush=True)
    for program in args.programs.split(","):
        for stage in stages:
            if stage.name not in wanted or (program == "finetune" and not stage.finetune):
                continue
            done = [r for r in rows if (r["program"], r["stage"]) == (program, stage.name)]
            row = done[0] if done else measure(program, stage, text_len, text_dim)
            if not done:
                rows.append(row)
            num = lambda x, w: f"{'–':>{w}}" if x is None else f"{x:>{w}.2f}"  # noqa: E731
            print(f"{program:<9} {stage.name:<6} {row['target']:<26} {'x'.join(map(str, row['mesh'])):<7} "
                  f"{row['frames']:>6} {num(row['peak_gib'], 9)} {num(row['arguments_gib'], 9)} "
                  f"{num(row['temp_gib'], 9)} {num(row['tflop_per_step'], 11)} {str(row['fits_v5e']):>8} "
                  f"{row['compile_seconds']:>9.1f}", flush=True)
            # Written after every row: a long run that is stopped keeps what it measured.
            write_json(out, dict(meta=dict(variant=args.variant, jax=jax.__version__, plans=PLANS), rows=rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
