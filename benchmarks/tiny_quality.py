r"""Quality of the shipped tiny cascade: text-to-video samples scored by the attribute detector.

Samples 64 captions (half from the test split's attribute distribution, half held-out colour–shape
pairs never seen in training) from pure noise through the whole cascade, reads each 64 × 64
output back with `evaluate.detect`, and reports the share of clips whose colour, shape,
direction and background match the caption. Every stage's own output, enlarged to the final size,
is read too: its accuracy, and its agreement with the base stage's reading (what the
super-resolution stages keep of what the base made). Per captioned shape it reports how
the output reads it and the bounding-box fill each stage draws (how sharp its corners are).
Prints tables and writes JSON.

  python benchmarks/tiny_quality.py          # table + benchmarks/results/tiny_quality.json
  python benchmarks/tiny_quality.py --from-true   # the SR stages alone, fed the true clips at the base size
"""

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from results_io import write_json  # noqa: E402
from dreamix_jax import cascade, evaluate, pretrained  # noqa: E402
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


def read_stages(model: pretrained.Cascade, final: cascade.Stage, attrs: list[synthetic.Attributes], first_seed: int,
                *, from_true: bool) -> dict[str, list[evaluate.Detection]]:
    """Sample the cascade on the attributes' captions (seeds first_seed, first_seed + 1, ...; those `edit`
    would use) and read every stage's output, enlarged to `final`'s size. `from_true` feeds the SR
    stages each caption's rendered clip at the base size instead of a base sample."""
    text, mask = model.text([a.caption() for a in attrs])
    keys = jnp.stack([jax.random.key(first_seed + i) for i in range(len(attrs))])
    true = None
    if from_true:
        clips = np.stack([synthetic.render(a, final.frames, final.height, final.width) for a in attrs])
        true = cascade.degrade(jnp.asarray(clips), model.base)
    videos = cascade.sample_cascade(model.unets, model.stages, jnp.asarray(text), jnp.asarray(mask), keys,
                                    schedule=model.schedule, base_video=true)
    found = {}
    for stage, video in zip(model.stages, videos, strict=True):
        enlarged = cascade.resize_space(cascade.resample_time(video, final.frames), final.height, final.width)
        found[stage.name] = [evaluate.detect(v) for v in np.asarray(jnp.clip(enlarged, -1.0, 1.0))]
    return found


def _per_stage(flag: str, spec: str | None, names: list[str], parser: argparse.ArgumentParser, kind: type,
               least: float) -> dict[str, int | float]:
    """'ssr1=32,ssr2=32' → {'ssr1': 32, 'ssr2': 32} (None → {}); a bad entry, or a value below `least`
    (or NaN), is a usage error."""
    values = {}
    for item in spec.split(",") if spec else []:
        name, _, value = item.partition("=")
        try:
            number = kind(value)
        except ValueError:
            number = None
        if name not in names or number is None or not number >= least:
            parser.error(f"{flag} takes STAGE=VALUE entries with VALUE ≥ {least} and STAGE one of {names}; "
                         f"got {item!r}.")
        values[name] = number
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(pretrained.SHIPPED))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--base-only", action="store_true",
                        help="sample and score the base stage alone (a quick check of a training run)")
    parser.add_argument("--cond-aug", type=float, default=None,
                        help="sample every SR stage at this conditioning-augmentation time instead of its own")
    parser.add_argument("--steps", default=None, metavar="STAGE=N,...",
                        help="sample these stages with N DDIM steps instead of their own, e.g. ssr1=32,ssr2=32")
    parser.add_argument("--guidance", default=None, metavar="STAGE=W,...",
                        help="sample these stages at classifier-free guidance weight W instead of their own, e.g. base=5")
    parser.add_argument("--eta", default=None, metavar="STAGE=E,...",
                        help="sample these stages with DDIM stochasticity E instead of their own (0 deterministic)")
    parser.add_argument("--from-true", action="store_true",
                        help="feed the SR stages each caption's true clip at the base size instead of a base sample")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/tiny_quality[_from_true].json)")
    args = parser.parse_args()
    if args.from_true and args.base_only:
        parser.error("--from-true samples the SR stages only; --base-only the base stage only: choose one.")
    results = pathlib.Path(__file__).parent / "results"
    args.out = args.out or str(results / ("tiny_quality_from_true.json" if args.from_true else "tiny_quality.json"))

    model = pretrained.load(args.weights)
    names = [s.name for s in model.stages]
    steps = _per_stage("--steps", args.steps, names, parser, int, 1)
    weights = _per_stage("--guidance", args.guidance, names, parser, float, 0.0)
    etas = _per_stage("--eta", args.eta, names, parser, float, 0.0)
    aug = lambda s: s.cond_aug if args.cond_aug is None or not s.is_sr else args.cond_aug  # noqa: E731
    model = dataclasses.replace(model, stages=tuple(dataclasses.replace(
        s, steps=steps.get(s.name, s.steps), guidance=weights.get(s.name, s.guidance), eta=etas.get(s.name, s.eta),
        cond_aug=aug(s)) for s in model.stages))
    final = model.final  # every stage's output is scored at the cascade's output size
    if args.base_only:
        model = model.base_only()
    pairs = captions(args.samples)
    # One detection list per stage: each stage's output enlarged to the final size.
    by_stage: dict[str, list[evaluate.Detection]] = {s.name: [] for s in model.stages}
    start = time.perf_counter()
    for first in range(0, len(pairs), args.batch):
        chunk = [a for _, a in pairs[first:first + args.batch]]
        found = read_stages(model, final, chunk, first, from_true=args.from_true)
        for name, detections in found.items():
            by_stage[name] += detections
        print(f"sampled {first + len(chunk)}/{len(pairs)} ({time.perf_counter() - start:.0f} s)", flush=True)
    detections, base_detections = by_stage[model.final.name], by_stage[model.base.name]
    truths = [a for _, a in pairs]
    half = len(pairs) // 2
    groups = {"all": slice(None), "seen pairs": slice(0, half), "held-out pairs": slice(half, None)}
    table = {name: evaluate.attribute_accuracy(detections[s], truths[s]) for name, s in groups.items()}
    base_row = "true clips, base size" if args.from_true else "base stage alone (all)"
    table[base_row] = evaluate.attribute_accuracy(base_detections, truths)
    # Agreement of each stage's reading with the base stage's: what the SR stages keep.
    agreement = {name: {a: float(np.mean([getattr(d, a) == getattr(b, a) for d, b in zip(found, base_detections)]))
                        for a in ATTRIBUTES} for name, found in by_stage.items() if name != model.base.name}

    print(f"\n{'clips':<24}" + "".join(f"{a:>12}" for a in ATTRIBUTES))
    for name, accuracy in table.items():
        print(f"{name:<24}" + "".join(f"{accuracy[a]:>12.1%}" for a in ATTRIBUTES))
    print(f"{'bar':<24}" + "".join(f"{BAR[a]:>12.0%}" for a in ATTRIBUTES))
    met = {a: table["all"][a] >= BAR[a] for a in ATTRIBUTES}
    print("meets the bar: " + ", ".join(f"{a} {'yes' if ok else 'no'}" for a, ok in met.items()))
    print(f"\n{'agreement with the base':<24}" + "".join(f"{a:>12}" for a in ATTRIBUTES))
    for name, agree in agreement.items():
        print(f"{'after ' + name:<24}" + "".join(f"{agree[a]:>12.1%}" for a in ATTRIBUTES))
    # Per captioned shape: how the output reads it, and the bounding-box fill each stage draws (a
    # rendered triangle fills about 0.5, a circle π/4, a square 1; blur pulls them towards each other).
    by_shape = {}
    for shape in synthetic.SHAPES:
        idx = [i for i, t in enumerate(truths) if t.shape == shape]
        by_shape[shape] = dict(
            clips=len(idx), read_as={s: sum(detections[i].shape == s for i in idx) for s in synthetic.SHAPES},
            median_fill={name: float(np.median([found[i].fill for i in idx])) for name, found in by_stage.items()})
    print(f"\n{'captioned shape':<16}{'clips':>6}  {'read as (output)':<36}" + "".join(
        f"{'fill ' + name:>11}" for name in by_stage))
    for shape, row in by_shape.items():
        read = ", ".join(f"{s} {n}" for s, n in row["read_as"].items() if n)
        print(f"{shape:<16}{row['clips']:>6}  {read:<36}" + "".join(f"{f:>11.3f}" for f in row["median_fill"].values()))
    # The same per stage, seen and held-out pairs apart: which stage loses a shape, and for which pairs.
    kept = {}
    for shape in synthetic.SHAPES:
        for group in ("seen pairs", "held-out pairs"):
            idx = [i for i in range(len(truths))[groups[group]] if truths[i].shape == shape]
            kept[f"{shape}, {group}"] = {name: [sum(found[i].shape == shape for i in idx), len(idx)]
                                         for name, found in by_stage.items()}
    print(f"\n{'read as captioned':<24}" + "".join(f"{name:>9}" for name in by_stage))
    for row, counts in kept.items():
        print(f"{row:<24}" + "".join(f"{f'{k}/{n}':>9}" for k, n in counts.values()))
    write_json(args.out, dict(
        weights=args.weights, from_true=args.from_true, cond_aug=[s.cond_aug for s in model.stages[1:]],
        steps={s.name: s.steps for s in model.stages}, guidance={s.name: s.guidance for s in model.stages},
        eta={s.name: s.eta for s in model.stages},
        training_steps=model.meta.get("steps"),
        samples=len(pairs), accuracy=table, bar=BAR,
        meets_bar=met, agreement_with_base=agreement, by_shape=by_shape, kept_by_stage=kept,
        seconds=round(time.perf_counter() - start, 1),
        examples=[dict(caption=c, detected=dict(color=d.color, shape=d.shape, direction=d.direction,
                                                background=d.background))
                  for (c, _), d in zip(pairs, detections, strict=True)],
        mean_coverage=float(np.mean([d.coverage for d in detections]))))


if __name__ == "__main__":
    main()
