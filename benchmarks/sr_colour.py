r"""Do the SR stages keep a shape whatever its colour? The held-out pairs' clips, repainted in every colour.

The SR stages lose most of the held-out pairs' shapes even from true clips (`tiny_quality.py
--from-true`). This takes the clips of `tiny_quality.py`'s held-out captions, re-renders each in
every palette colour (same shape, size, track, motion and background), feeds the true clip at
the base size to the SR stages and reads every stage's output with the detector. A stage that
sharpens shapes from their outline alone keeps them in every colour; one that ties a shape to its
colour keeps the seen colours only. Prints, per captioned shape and colour, how many outputs read
as that shape and their median bounding-box fill, and writes JSON.

  python benchmarks/sr_colour.py                      # the shipped cascade, 4 clips per shape
  python benchmarks/sr_colour.py --weights other.npz --clips 8
"""

import argparse
import dataclasses
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from results_io import write_json  # noqa: E402
from tiny_quality import captions, read_stages  # noqa: E402
from dreamix_jax import pretrained  # noqa: E402
from dreamix_jax.data import synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(pretrained.SHIPPED))
    parser.add_argument("--clips", type=int, default=4, help="clips per held-out pair")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "sr_colour.json"))
    args = parser.parse_args()
    if args.clips < 1:
        parser.error("--clips must be at least 1.")

    model = pretrained.load(args.weights)
    final = model.final
    held = [a for _, a in captions(64)[32:]]
    start = time.perf_counter()
    rows = []
    for color, shape in sorted(synthetic.HELD_OUT, key=lambda pair: synthetic.SHAPES.index(pair[1])):
        geometry = [a for a in held if (a.color, a.shape) == (color, shape)][:args.clips]
        for paint in synthetic.COLORS:
            attrs = [dataclasses.replace(a, color=paint) for a in geometry]
            found = read_stages(model, final, attrs, 0, from_true=True)
            kept = {name: sum(d.shape == shape for d in stage) for name, stage in found.items()}
            fill = {name: float(np.median([d.fill for d in stage])) for name, stage in found.items()}
            rows.append(dict(shape=shape, color=paint, held_out=(paint, shape) in synthetic.HELD_OUT,
                             clips=len(attrs), kept=kept, median_fill=fill))
            print(f"{shape} in {paint}: {kept[final.name]}/{len(attrs)} kept ({time.perf_counter() - start:.0f} s)",
                  flush=True)

    names = [s.name for s in model.stages]
    print(f"\n{'shape':<10}{'colour':<8}{'':<10}" + "".join(f"{'kept ' + n:>11}" for n in names)
          + "".join(f"{'fill ' + n:>11}" for n in names))
    for row in rows:
        mark = "held out" if row["held_out"] else ""
        print(f"{row['shape']:<10}{row['color']:<8}{mark:<10}"
              + "".join(f"{str(row['kept'][n]) + '/' + str(row['clips']):>11}" for n in names)
              + "".join(f"{row['median_fill'][n]:>11.3f}" for n in names))
    write_json(args.out, dict(weights=args.weights, training_steps=model.meta.get("steps"), rows=rows,
                              seconds=round(time.perf_counter() - start, 1)))


if __name__ == "__main__":
    main()
