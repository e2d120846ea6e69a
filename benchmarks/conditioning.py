r"""The conditioning probe on a cascade weights file: does each stage read every word of its prompt?

For each stage, the relative increase of its denoising x-error when one captioned attribute's word
is swapped (colour, shape, direction, background), at a few noise levels, on a fixed set of
rendered test clips with the same noise (`dreamix_jax/probe.py`). A positive gap means the stage
uses that word; zero means it ignores it. Prints a table and writes JSON.

  python benchmarks/conditioning.py                      # the shipped cascade, every stage
  python benchmarks/conditioning.py --weights other.npz --stages base --clips 32
"""

import argparse
import pathlib
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from results_io import write_json  # noqa: E402
from dreamix_jax import pretrained, probe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(pretrained.SHIPPED))
    parser.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "conditioning.json"))
    args = parser.parse_args()

    model = pretrained.load(args.weights)
    names = [s.name for s in model.stages]
    wanted = args.stages.split(",") if args.stages else names
    unknown = set(wanted) - set(names)
    if unknown:
        raise SystemExit(f"Unknown stages {sorted(unknown)}; this cascade has {names}.")
    final = model.final
    video, attrs = probe.probe_set(args.clips, final.frames, final.height)
    encoded = [model.text(captions) for captions in probe.probe_captions(attrs)]
    texts, masks = np.stack([e for e, _ in encoded]), np.stack([m for _, m in encoded])

    results, start = {}, time.perf_counter()
    for stage, unet in zip(model.stages, model.unets, strict=True):
        if stage.name not in wanted:
            continue
        graphdef, state = nnx.split(unet)
        errors = jax.jit(lambda state, *a, stage=stage, graphdef=graphdef: probe.x_errors(
            nnx.merge(graphdef, state), *a, stage=stage, schedule=model.schedule))(
            state, texts, masks, video, jax.random.key(0))
        errors = np.asarray(errors)
        results[stage.name] = dict(x_error=dict(zip(map(str, probe.TIMES), errors[0].tolist())),
                                   gaps=probe.gaps(errors))
        print(f"{stage.name}: done ({time.perf_counter() - start:.0f} s)", flush=True)

    print(f"\n{'stage':<6} {'t':>4} {'x-error':>9}" + "".join(f"{a:>12}" for a in probe.ATTRIBUTES))
    for name, result in results.items():
        for t in probe.TIMES:
            print(f"{name:<6} {t:>4} {result['x_error'][str(t)]:>9.4f}"
                  + "".join(f"{result['gaps'][a][t]:>+12.1%}" for a in probe.ATTRIBUTES))
    write_json(args.out, dict(weights=args.weights, training_steps=model.meta.get("steps"), clips=args.clips,
                              times=list(probe.TIMES), stages=results,
                              seconds=round(time.perf_counter() - start, 1)))


if __name__ == "__main__":
    main()
