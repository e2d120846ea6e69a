r"""Cost of one U-Net training step: parameters, FLOPs, compile time, step time, per-device memory.

Compiles the AdamW v-loss step (video path) of `configs/unet.py:tiny` and `:imagen_base` on an
emulated 8-device CPU mesh, fully sharded (mesh 1 × 8 × 1, global batch 8), from abstract
shapes: the base-size model is never materialised. FLOPs come from XLA's cost analysis of the
compiled per-device program (× devices for the step); memory from `memory_analysis()` of the
same program. Step time is measured for the tiny model only (median of repeats after warm-up).

  python benchmarks/unet_step.py                   # table + benchmarks/results/unet_step.json
  python benchmarks/unet_step.py --skip_base       # tiny only (seconds instead of minutes)
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import unet as unet_configs  # noqa: E402
from results_io import write_json  # noqa: E402
from dreamix_jax import sharding  # noqa: E402
from dreamix_jax.models.unet3d import UNet3D, UNet3DConfig, param_count  # noqa: E402
from dreamix_jax.objective import make_train_step  # noqa: E402

MESH_SHAPE = (1, 8, 1)
GLOBAL_BATCH = 8
GIB = 2**30


def abstract_inputs(config, mesh):
    """Abstract batch (video, text, mask) with its sharding: batch split over the data axes."""
    v, t = config.video, config.text
    shapes = dict(video=(GLOBAL_BATCH, v.frames, v.height, v.width, v.channels),
                  text=(GLOBAL_BATCH, t.length, t.dim), text_mask=(GLOBAL_BATCH, t.length))
    return {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding.batch_sharding(mesh, len(s)))
            for k, s in shapes.items()}


def compile_step(config, unet_cfg: UNet3DConfig, mesh):
    """Lower and compile the sharded train step from abstract shapes; returns (compiled, seconds, params)."""
    model_fn = lambda: UNet3D(unet_cfg, rngs=nnx.Rngs(0))  # noqa: E731
    graphdef, abstract_state = sharding.abstract_sharded(model_fn, mesh)
    params, rest = nnx.split_state(abstract_state, nnx.Param, ...)
    optimizer = optax.adamw(1e-4)
    opt_state = jax.eval_shape(optimizer.init, params)  # XLA places it like the params
    step = jax.jit(make_train_step(graphdef, optimizer, paths=("video",)), donate_argnums=(0, 1))
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    with jax.set_mesh(mesh):
        lowered = step.lower(params, opt_state, rest, abstract_inputs(config, mesh), key)
        start = time.perf_counter()
        compiled = lowered.compile()
    return compiled, time.perf_counter() - start, (graphdef, model_fn, optimizer, step)


def time_step(config, mesh, graphdef, model_fn, optimizer, step, repeats: int = 5) -> float:
    """Median seconds per step of the compiled tiny step on real (random) data."""
    model = sharding.create_sharded(model_fn, mesh)
    params, rest = nnx.split_state(nnx.split(model)[1], nnx.Param, ...)
    opt_state = optimizer.init(params)
    batch = {k: jax.device_put(jax.random.normal(jax.random.key(1), a.shape), a.sharding)
             for k, a in abstract_inputs(config, mesh).items()}
    times = []
    with jax.set_mesh(mesh):
        for i in range(repeats + 1):  # the first call is warm-up
            start = time.perf_counter()
            params, opt_state, loss, _ = step(params, opt_state, rest, batch, jax.random.key(i))
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure(variant: str, remat: bool, dtype: str, mesh, timed: bool) -> dict:
    config = unet_configs.get_config(variant)
    unet_cfg = dataclasses.replace(UNet3DConfig.from_config(config.model), remat=remat, dtype=dtype)
    compiled, compile_s, parts = compile_step(config, unet_cfg, mesh)
    graphdef, model_fn, optimizer, step = parts
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    row = dict(
        variant=variant, dtype=dtype, remat=remat, mesh=list(MESH_SHAPE), global_batch=GLOBAL_BATCH,
        video=[config.video.frames, config.video.height, config.video.width],
        params=param_count(nnx.eval_shape(model_fn)),
        step_tflops=cost.get("flops", float("nan")) * mesh.devices.size / 1e12,
        compile_s=compile_s,
        peak_gib_per_device=peak / GIB,
        temp_gib_per_device=mem.temp_size_in_bytes / GIB,
        args_gib_per_device=mem.argument_size_in_bytes / GIB,
        step_s=time_step(config, mesh, graphdef, model_fn, optimizer, step) if timed else None,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "unet_step.json"))
    parser.add_argument("--skip_base", action="store_true", help="only the tiny model")
    args = parser.parse_args()
    mesh = sharding.make_mesh(MESH_SHAPE)
    plan = [("tiny", False, "float32", True)]
    if not args.skip_base:
        plan += [("imagen_base", False, "bfloat16", False), ("imagen_base", True, "bfloat16", False)]

    rows = []
    header = (f"{'variant':<12} {'dtype':<9} {'remat':<5} {'params':>10} {'TFLOP/step':>10} "
              f"{'compile s':>9} {'step s':>7} {'peak GiB/dev':>12} {'temp GiB/dev':>12}")
    print(header, flush=True)
    for variant, remat, dtype, timed in plan:
        row = measure(variant, remat, dtype, mesh, timed)
        rows.append(row)
        step = f"{row['step_s']:.3f}" if row["step_s"] is not None else "-"
        print(f"{variant:<12} {dtype:<9} {str(remat):<5} {row['params']:>10,} {row['step_tflops']:>10.4f} "
              f"{row['compile_s']:>9.1f} {step:>7} {row['peak_gib_per_device']:>12.3f} "
              f"{row['temp_gib_per_device']:>12.3f}", flush=True)

    meta = dict(backend=jax.default_backend(), devices=jax.device_count(), jax=jax.__version__,
                cpu_count=os.cpu_count())
    print(f"wrote {write_json(args.out, dict(meta=meta, rows=rows))}")


if __name__ == "__main__":
    main()
