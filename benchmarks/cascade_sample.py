r"""Wall time of sampling the whole tiny cascade at batch 1, after compilation.

Builds the four U-Nets of `configs/cascade.py:tiny` (random weights: the cost does not depend on
their values), samples once to compile, then times `--repeats` full cascade runs with the
configured DDIM steps and guidance. Prints per-stage medians, the compile count of the chunk
sampler (one program per stage: chunks of a stage reuse it) and writes JSON.

  python benchmarks/cascade_sample.py        # table + benchmarks/results/cascade_sample.json
"""

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import cascade as cascade_configs  # noqa: E402
from results_io import write_json  # noqa: E402
from dreamix_jax import cascade  # noqa: E402
from dreamix_jax.diffusion import runs_one_pass  # noqa: E402
from dreamix_jax.models.unet3d import UNet3D  # noqa: E402


def run_once(models, stages, text, mask, key) -> list[float]:
    """Seconds per stage of one cascade run (each stage waited for before the next starts)."""
    seconds: dict[str, float] = {}
    cascade.sample_cascade(models, stages, text, mask, key, seconds=seconds)
    return [seconds[stage.name] for stage in stages]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "cascade_sample.json"))
    args = parser.parse_args()

    config = cascade_configs.get_config("tiny")
    stages = cascade.stages_from_config(config)
    models = [UNet3D(s.unet, rngs=nnx.Rngs(i)) for i, s in enumerate(stages)]
    text = jax.random.normal(jax.random.key(0), (1, config.text.max_length, config.text.model.d_model))
    mask = jnp.ones((1, config.text.max_length), bool)

    start = time.perf_counter()
    first = run_once(models, stages, text, mask, jax.random.key(1))
    compile_seconds = time.perf_counter() - start
    runs = [run_once(models, stages, text, mask, jax.random.key(2 + r)) for r in range(args.repeats)]
    per_stage = [statistics.median(r[i] for r in runs) for i in range(len(stages))]
    total = statistics.median(sum(r) for r in runs)

    print(f"{'stage':<6} {'output':<10} {'steps':>5} {'guided':>6} {'chunks':>6} {'first run s':>11} {'median s':>9}")
    rows = []
    for stage, first_s, median_s in zip(stages, first, per_stage, strict=True):
        chunks = len(cascade.frame_chunks(stage.frames, stage.chunk))
        print(f"{stage.name:<6} {'×'.join(map(str, stage.shape)):<10} {stage.steps:>5} {str(not runs_one_pass(stage.guidance)):>6} "
              f"{chunks:>6} {first_s:>11.2f} {median_s:>9.2f}")
        rows.append(dict(stage=stage.name, shape=list(stage.shape), steps=stage.steps, guidance=stage.guidance,
                         chunks=chunks, first_run_seconds=first_s, median_seconds=median_s))
    programs = cascade._sample_chunk._cache_size()
    print(f"whole cascade: median {total:.2f} s over {args.repeats} runs (first run, compiling: "
          f"{compile_seconds:.1f} s); chunk-sampler programs compiled: {programs}")

    out = write_json(args.out, dict(meta=dict(jax=jax.__version__, devices=str(jax.devices()), batch=1),
                                    rows=rows, total_median_seconds=total, first_run_seconds=compile_seconds,
                                    compiled_programs=programs))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
