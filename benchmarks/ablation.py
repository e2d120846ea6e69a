r"""Dreamix's finetuning ablation (paper, Table 1) with automatic scores on the synthetic domain.

For a fixed set of source clips and three edit categories — motion (a new direction), object (a
new colour) and background (a new background colour) — edit each clip with the shipped tiny
cascade under three finetuning settings (none, video-only, mixed) over a grid of noise strengths
`s`, and score every output with the attribute detector:

  alignment  the edited attribute reads as the prompt asks;
  fidelity   everything else is kept: the other captioned attributes, the size, and the start
             position (within evaluate.START_TOLERANCE, 0.1, of the frame), as the detector reads them
             in the source degraded to the edit's size (as `evaluate.edit_scores` compares an edit with
             its input); the stripes on the shape are not scored, since the detector does not read them;
  success    both.

With `--base-only` the cascade is cut to its base stage (8 × 16 × 16): finetuning and sampling
cost a fraction of the whole cascade's, and the SR stages keep the detector's reading of the base
output (benchmarks/tiny_quality.py measures that agreement), so the table reads the same edits.

Each source is finetuned under the rare token "sks" (as the paper does), or with
`--finetune-prompt caption` under its own caption, which shares every word but the edited one with
the edit prompts (README, "The finetuning ablation").

`--guidance` takes several weights for the base stage; every cell is then edited at each, in the
same batch (the weight is traced, so one program serves all). Each row of the JSON holds what the
detector read, to tell which kept attribute an edit lost.

  python benchmarks/ablation.py              # table + benchmarks/results/ablation.json
  python benchmarks/ablation.py --base-only --sources 8
  python benchmarks/ablation.py --base-only --sources 8 --s 0.85,0.9,0.95 --guidance 1.5,3
  python benchmarks/ablation.py --base-only --sources 16 --s 0.9,0.95 --finetune-prompt caption
"""

import argparse
import dataclasses
import itertools
import pathlib
import sys
import time

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from results_io import write_json  # noqa: E402
from dreamix_jax import cascade, dreamix, evaluate, pretrained  # noqa: E402
from dreamix_jax.data import shapes_video, synthetic  # noqa: E402

SETTINGS = {"none": None, "video-only": (1.0, 0.0), "mixed": (1.0, 1.0)}  # (w_video, alpha)
CATEGORIES = {"motion": "direction", "object": "color", "background": "background"}
READ = ("color", "shape", "direction", "background", "size")  # what the detector reads and fidelity keeps


def _next(values, current):
    values = list(values)
    return values[(values.index(current) + 1) % len(values)]


def new_motion(source: synthetic.Attributes) -> str | None:
    """The first direction after the source's (left, right, up, down, in turn) whose track from the
    source's start stays inside the frame, as every training track does; None when there is none."""
    moving = [d for d in synthetic.DIRECTIONS if d != "still"]
    turn = moving.index(source.direction)
    for direction in moving[turn + 1:] + moving[:turn]:
        if synthetic.track_fits(dataclasses.replace(source, direction=direction)):
            return direction
    return None


def edits_of(source: synthetic.Attributes) -> dict[str, synthetic.Attributes]:
    """One target per category: a new direction (`new_motion`), the next colour, the next background."""
    return dict(
        motion=dataclasses.replace(source, direction=new_motion(source)),
        object=dataclasses.replace(source, color=_next(synthetic.COLORS, source.color)),
        background=dataclasses.replace(source, background=_next(synthetic.BACKGROUNDS, source.background)))


def score(video: np.ndarray, source: evaluate.Detection, target: synthetic.Attributes,
          attribute: str) -> dict[str, bool]:
    """Alignment, fidelity and success of one edited clip, and what the detector read in it.

    `source` is the detector's reading of the source at the edit's size: kept means read alike at one
    resolution (at 16 × 16 it reads some small triangles as circles, the true clip's as well)."""
    found = evaluate.detect(video)
    aligned = getattr(found, attribute) == getattr(target, attribute)
    kept = [getattr(found, a) == getattr(source, a) for a in READ if a != attribute]
    faithful = all(kept) and evaluate.start_kept(found, source)
    read = {a: getattr(found, a) for a in READ} | {"start": [round(x, 3) for x in found.start]}
    return dict(alignment=aligned, fidelity=faithful, success=aligned and faithful, read=read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(pretrained.SHIPPED), help="cascade weights file (default: shipped)")
    parser.add_argument("--sources", type=int, default=3)
    parser.add_argument("--s", default="0.6,0.8", help="comma-separated noise strengths")
    parser.add_argument("--steps", type=int, default=dreamix.FinetuneSettings.steps)
    parser.add_argument("--lr", type=float, default=dreamix.FinetuneSettings.lr)
    parser.add_argument("--guidance", default="", help="comma-separated base-stage guidance weights (default: its own)")
    parser.add_argument("--prompt-prefix", default="", help="put before each finetuned setting's edit prompts "
                        "(e.g. 'sks ', the finetune's rare token, as UniTune prompts its edits)")
    parser.add_argument("--finetune-prompt", default=dreamix.FinetuneSettings.prompt,
                        help="the prompt each source is finetuned under: a rare token (default), or 'caption' "
                        "for the source's own caption")
    parser.add_argument("--base-only", action="store_true", help="edit and score at the base stage's size")
    parser.add_argument("--workdir", default="/tmp/dreamix_ablation")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "ablation.json"))
    args = parser.parse_args()
    s_values = [float(s) for s in args.s.split(",")]

    model = pretrained.load(args.weights)
    guidances = [float(g) for g in args.guidance.split(",")] if args.guidance else [model.stages[0].guidance]
    final = model.final  # sources are rendered at the cascade's output size, as inputs are
    if args.base_only:
        model = model.base_only()
    edited = model.final  # the size edits come out at and are scored at (the base stage's with --base-only)
    sources = []
    seed = shapes_video.SPLIT_SEEDS["test"]
    # Moving sources whose start admits another direction: a motion edit then changes the direction
    # and can keep the start (from most starts no other track fits, and a model true to its data
    # moves the start instead).
    while len(sources) < args.sources:
        attrs = synthetic.sample_attributes(seed)
        seed += 1
        if attrs.direction != "still" and new_motion(attrs):
            sources.append(attrs)

    rows, readings, start = [], [], time.perf_counter()
    for index, source in enumerate(sources):
        clip = synthetic.render(source, final.frames, final.height, final.width)
        reading = evaluate.detect(np.asarray(cascade.degrade(jnp.asarray(clip)[None], edited)[0]))
        readings.append(dataclasses.asdict(reading))
        targets = edits_of(source)
        tune_prompt = source.caption() if args.finetune_prompt == "caption" else args.finetune_prompt
        for setting, weights in SETTINGS.items():
            tuned = model
            if weights is not None:
                tune = dreamix.FinetuneSettings(prompt=tune_prompt, w_video=weights[0], alpha=weights[1],
                                                lr=args.lr, steps=args.steps)
                tuned, _ = dreamix.finetune(model, clip, tune, args.workdir, progress=False)
            cells = [(c, a, s, g) for c, a in CATEGORIES.items() for s in s_values for g in guidances]
            prefix = args.prompt_prefix if weights is not None else ""
            requests = [dreamix.EditRequest(prefix + targets[c].caption(), seed=index, s=s) for c, _, s, _ in cells]
            # One program for every weight: the guidance weight is traced, one per request.
            videos, _ = dreamix.edit(tuned, clip, requests, guidance=[g for *_, g in cells])
            for (category, attribute, s, g), request, video in zip(cells, requests, videos, strict=True):
                rows.append(dict(source=index, setting=setting, category=category, s=s, guidance=g,
                                 prompt=request.prompt, **score(video, reading, targets[category], attribute)))
            print(f"source {index + 1}/{len(sources)}, {setting}: done ({time.perf_counter() - start:.0f} s)",
                  flush=True)

    metrics = ("alignment", "fidelity", "success")
    table = []
    print(f"\n{'category':<11} {'setting':<11} {'s':>4} {'w':>4}" + "".join(f"{m:>10}" for m in metrics))
    for category, setting, s, g in itertools.product(CATEGORIES, SETTINGS, s_values, guidances):
        picked = [r for r in rows if (r["category"], r["setting"], r["s"], r["guidance"]) == (category, setting, s, g)]
        means = {m: float(np.mean([r[m] for r in picked])) for m in metrics}
        table.append(dict(category=category, setting=setting, s=s, guidance=g, n=len(picked), **means))
        print(f"{category:<11} {setting:<11} {s:>4g} {g:>4g}" + "".join(f"{means[m]:>10.0%}" for m in metrics))
    # The paper's raters picked each edit's best of several hyperparameter combinations (its appendix
    # B): the share of sources with at least one success anywhere on the s × guidance grid.
    best_of_grid = []
    print(f"\nsuccess of each source's best cell of the {len(s_values)} × {len(guidances)} grid")
    for category, setting in itertools.product(CATEGORIES, SETTINGS):
        won = {r["source"] for r in rows if (r["category"], r["setting"]) == (category, setting) and r["success"]}
        best_of_grid.append(dict(category=category, setting=setting, success=len(won) / len(sources)))
        print(f"{category:<11} {setting:<11} {len(won) / len(sources):>10.0%}")
    write_json(args.out, dict(sources=len(sources), source_attributes=[dataclasses.asdict(a) for a in sources],
                              source_readings=readings,
                              s=s_values, finetune_steps=args.steps, lr=args.lr,
                              guidance=guidances, prompt_prefix=args.prompt_prefix,
                              finetune_prompt=args.finetune_prompt,
                              base_only=args.base_only, table=table, best_of_grid=best_of_grid,
                              rows=rows, seconds=round(time.perf_counter() - start, 1)))


if __name__ == "__main__":
    main()
