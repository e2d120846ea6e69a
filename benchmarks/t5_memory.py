r"""Compile-time memory of the T5-XXL encoder forward, per device, before spending a pod.

Compiles the sharded encoder forward (`configs/t5.py:xxl`, compute in bfloat16, weights stored in
bfloat16 or float32) at batch 8 × 128 tokens from abstract shapes — the 4.8B-parameter encoder
is never materialised — and reads `memory_analysis()` of the compiled per-device program:

  * on the emulated 8-device CPU mesh (data 1 × fsdp 4 × tensor 2);
  * ahead of time for a TPU v5e 2×2 slice (4 chips, fsdp 2 × tensor 2), when `libtpu` is
    installed (`pip install "libtpu==0.0.42.*"`); otherwise that row says it was skipped.

  python benchmarks/t5_memory.py          # table + benchmarks/results/t5_memory.json
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import t5 as t5_configs  # noqa: E402
from results_io import write_json  # noqa: E402
from dreamix_jax import sharding  # noqa: E402
from dreamix_jax.models.t5 import T5Config, T5Encoder  # noqa: E402

BATCH, LENGTH = 8, 128
GIB = 2**30


def tpu_devices(topology: str):
    """Devices of a TPU topology, compiled for from this CPU host (needs libtpu); None without it."""
    try:
        from jax.experimental import topologies

        return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    except Exception as e:  # no libtpu, or a libtpu that does not match this jax
        print(f"TPU topology {topology} unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return None


def compile_forward(cfg: T5Config, mesh) -> tuple[dict, float]:
    """AOT-compile the sharded forward from abstract shapes; per-device memory (bytes) and seconds."""
    graphdef, abstract = sharding.abstract_sharded(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0)), mesh)
    batch = sharding.batch_sharding(mesh, 2)
    ids = jax.ShapeDtypeStruct((BATCH, LENGTH), jnp.int32, sharding=batch)
    mask = jax.ShapeDtypeStruct((BATCH, LENGTH), jnp.bool_, sharding=batch)

    def forward(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = jax.jit(forward, out_shardings=sharding.batch_sharding(mesh, 3)).lower(abstract, ids, mask).compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    memory = dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes, temp=m.temp_size_in_bytes,
                  peak=m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                  - m.alias_size_in_bytes)
    return memory, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="xxl", choices=t5_configs.VARIANTS)
    parser.add_argument("--topology", default="v5e:2x2")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "t5_memory.json"))
    args = parser.parse_args()

    base = dict(t5_configs.get_config(args.variant).model)
    params = None
    targets = [("cpu", f"{len(jax.devices())} emulated CPU devices", jax.devices(), (1, 4, 2))]
    tpu = tpu_devices(args.topology)
    targets.append(("tpu", f"TPU {args.topology} (AOT)", tpu, (1, 2, 2)))

    header = (f"{'target':<28} {'mesh':<10} {'weights':<9} {'params':>14} {'args GiB':>9} {'temp GiB':>9} "
              f"{'out GiB':>8} {'peak GiB':>9} {'compile s':>10}")
    print(header, flush=True)
    print("-" * len(header), flush=True)
    rows = []
    for kind, label, devices, mesh_shape in targets:
        for param_dtype in ("bfloat16", "float32"):
            cfg = T5Config.from_config({**base, "dtype": "bfloat16", "param_dtype": param_dtype})
            row = dict(target=kind, label=label, mesh=list(mesh_shape), param_dtype=param_dtype, compute="bfloat16",
                       batch=BATCH, length=LENGTH)
            if devices is None:
                rows.append({**row, "skipped": "libtpu not installed"})
                print(f"{label:<28} skipped: libtpu not installed", flush=True)
                break
            mesh = sharding.make_mesh(mesh_shape, devices[:int(np.prod(mesh_shape))])
            if params is None:
                abstract = nnx.state(nnx.eval_shape(lambda cfg=cfg: T5Encoder(cfg, rngs=nnx.Rngs(0))))
                params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
            memory, seconds = compile_forward(cfg, mesh)
            rows.append({**row, "params": params, "bytes_per_device": memory, "compile_seconds": seconds})
            print(f"{label:<28} {'x'.join(map(str, mesh_shape)):<10} {param_dtype:<9} {params:>14,} "
                  f"{memory['arguments'] / GIB:>9.3f} {memory['temp'] / GIB:>9.3f} {memory['outputs'] / GIB:>8.3f} "
                  f"{memory['peak'] / GIB:>9.3f} {seconds:>10.1f}", flush=True)

    meta = dict(variant=args.variant, jax=jax.__version__, batch=BATCH, length=LENGTH)
    print(f"wrote {write_json(args.out, dict(meta=meta, rows=rows))}")


if __name__ == "__main__":
    main()
