r"""Quality of the shipped tiny cascade: text-to-video samples scored by the attribute detector.

Samples 64 captions (half from the test split's attribute distribution, half held-out colour–shape
pairs never seen in training) from pure noise through the whole cascade, reads each 64 × 64
output back with `evaluate.detect`, and reports the share of clips whose colour, shape,
direction and background match the caption. The base stage's own output, enlarged, is scored
too. Prints a table and writes JSON.

  python benchmarks/tiny_quality.py          # table + benchmarks/results/tiny_quality.json
"""

import argparse
import dataclasses
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from results_io import write_json  # noqa: E402
from dreamix_jax import cascade, dreamix, evaluate, pretrained  # noqa: E402
from dreamix_jax.data import shapes_video, synthetic  # noqa: E402

ATTRIBUTES = ("color", "shape", "direction", "background")
BAR = dict(color=0.9, shape=0.8, direction=0.8, background=0.9)  # the quality bar the cascade is held to


def captions(count: int) -> list[tuple[str, synthetic.Attributes]]:
    """`count` (caption, attributes): the first half seen-pair captions, the second half held-out pairs."""
    half = count // 2
    seen = [synthetic.sample_attributes(shapes_video.SPLIT_SEEDS["test"] + i) for i in range(half)]
    held = [synthetic.sample_attributes(shapes_video.SPLIT_SEEDS["held_out"] + i, held_out=True)
            for i in range(count - half)]
    return [(a.caption(), a) for a in seen + held]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(pretrained.SHIPPED))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "tiny_quality.json"))
    args = parser.parse_args()

    model = pretrained.load(args.weights)
    final = model.final
    pairs = captions(args.samples)
    # The base stage alone, its output enlarged to the final size, separates what the base
    # stage gets right from what the super-resolution stages keep.
    base_only = dataclasses.replace(model, stages=model.stages[:1], unets=model.unets[:1])
    detections, base_detections, start = [], [], time.perf_counter()
    for first in range(0, len(pairs), args.batch):
        chunk = pairs[first:first + args.batch]
        requests = [dreamix.EditRequest(caption, seed=first + i, s=1.0) for i, (caption, _) in enumerate(chunk)]
        videos, _ = dreamix.edit(model, None, requests)
        detections += [evaluate.detect(v) for v in videos]
        base_videos, _ = dreamix.edit(base_only, None, requests)
        enlarged = cascade.resize_space(cascade.resample_time(base_videos, final.frames), final.height, final.width)
        base_detections += [evaluate.detect(v) for v in np.asarray(enlarged)]
        print(f"sampled {len(detections)}/{len(pairs)} ({time.perf_counter() - start:.0f} s)", flush=True)
    truths = [a for _, a in pairs]
    half = len(pairs) // 2
    groups = {"all": slice(None), "seen pairs": slice(0, half), "held-out pairs": slice(half, None)}
    table = {name: evaluate.attribute_accuracy(detections[s], truths[s]) for name, s in groups.items()}
    table["base stage alone (all)"] = evaluate.attribute_accuracy(base_detections, truths)

    print(f"\n{'clips':<24}" + "".join(f"{a:>12}" for a in ATTRIBUTES))
    for name, accuracy in table.items():
        print(f"{name:<24}" + "".join(f"{accuracy[a]:>12.1%}" for a in ATTRIBUTES))
    print(f"{'bar':<24}" + "".join(f"{BAR[a]:>12.0%}" for a in ATTRIBUTES))
    met = {a: table["all"][a] >= BAR[a] for a in ATTRIBUTES}
    print("meets the bar: " + ", ".join(f"{a} {'yes' if ok else 'no'}" for a, ok in met.items()))
    write_json(args.out, dict(
        weights=args.weights, training_steps=model.meta.get("steps"), samples=len(pairs), accuracy=table, bar=BAR,
        meets_bar=met, seconds=round(time.perf_counter() - start, 1),
        examples=[dict(caption=c, detected=dict(color=d.color, shape=d.shape, direction=d.direction,
                                                background=d.background))
                  for (c, _), d in zip(pairs, detections, strict=True)],
        mean_coverage=float(np.mean([d.coverage for d in detections]))))


if __name__ == "__main__":
    main()
