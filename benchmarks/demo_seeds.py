r"""The demo's edits over many draws: how often each succeeds, at the base stage's size.

The demo (`python -m dreamix_jax.demo`, config `configs/dreamix.py:demo`) edits the bundled clip
once per prompt: one finetune (its seed draws the noise and times of every finetuning step) and one
sampling seed per edit. Both draws change what an edit shows, so one demo run says little about a
setting. This script finetunes the base stage on a clip (default: the bundled one, and the demo's
settings) once per finetune seed, edits it with each prompt at each `s` and guidance weight with
sampling seeds 0 … N-1 (one batch per finetune), and scores every edit as the demo's `result.json`
does (`evaluate.edit_scores`): success is alignment 1 (every attribute of the prompt read) and
fidelity 1 (size and start position kept).

The cascade is cut to its base stage (8 × 16 × 16), where the layout is decided, and a finetune of
the base stage alone takes seconds to minutes. The SR stages keep the detector's reading of base
samples (benchmarks/tiny_quality.py), but not always of an edit whose colour lies between two
classes: a background edited to light gray can read white here and gray after them (README).

  python benchmarks/demo_seeds.py                    # the demo's settings; table + benchmarks/results/demo_seeds.json
  python benchmarks/demo_seeds.py --finetune-prompt sks --lr 2e-4 --steps 40 --s 0.9,0.95
  python benchmarks/demo_seeds.py --steps 0 --s 0.3 --guidance 1,3 \
      --prompts "a yellow circle moving left on a gray background;a green circle moving left on a gray background"
  python benchmarks/demo_seeds.py --clip frames/ --caption "a red circle moving right on a gray background" \
      --prompts "a red circle moving up on a gray background"   # another input: a video or a folder of frames
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
from configs import dreamix as dreamix_configs  # noqa: E402
from dreamix_jax import cascade, dreamix, edit, evaluate, pretrained  # noqa: E402
from dreamix_jax.data import video_io  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    defaults = dreamix_configs.get_config("demo")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(pretrained.SHIPPED), help="cascade weights file (default: shipped)")
    parser.add_argument("--clip", default=str(edit.EXAMPLE_CLIP),
                        help="the input: a video file or a folder of frames (default: the bundled clip)")
    parser.add_argument("--caption", default=edit.EXAMPLE_CAPTION, help="the input's caption (default: the bundled's)")
    parser.add_argument("--prompts", default=defaults.prompt, help="';'-separated (default: the demo's)")
    parser.add_argument("--s", default=str(defaults.s), help="comma-separated noise strengths")
    parser.add_argument("--guidance", default="", help="comma-separated base-stage guidance weights (default: its own)")
    parser.add_argument("--seeds", type=int, default=8, help="sampling seeds 0 … N-1 per edit")
    parser.add_argument("--finetune-seeds", default="0,1", help="comma-separated finetune seeds")
    # The demo learns its clip under the clip's caption; "caption" does that for any --clip.
    tune_default = "caption" if defaults.finetune.prompt == edit.EXAMPLE_CAPTION else defaults.finetune.prompt
    parser.add_argument("--finetune-prompt", default=tune_default,
                        help="the prompt the clip is learned under; 'caption' is --caption (default: as the demo)")
    parser.add_argument("--lr", type=float, default=defaults.finetune.lr)
    parser.add_argument("--steps", type=int, default=defaults.finetune.steps, help="finetuning steps (0: none)")
    parser.add_argument("--alpha", type=float, default=defaults.finetune.alpha, help="weight of the frames loss")
    parser.add_argument("--workdir", default="/tmp/dreamix_demo_seeds")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "demo_seeds.json"))
    args = parser.parse_args()
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
    s_values = _floats(args.s)
    finetune_seeds = [int(x) for x in args.finetune_seeds.split(",")] if args.steps else [0]
    tune_prompt = args.caption if args.finetune_prompt == "caption" else args.finetune_prompt

    model = pretrained.load(args.weights)
    guidances = _floats(args.guidance) or [model.stages[0].guidance]
    model = model.base_only()
    clip, _ = video_io.read_frames(args.clip)  # by default the demo's input, as decoded from the bundled file
    source = np.asarray(cascade.degrade(jnp.asarray(clip)[None], model.final)[0])

    rows, start = [], time.perf_counter()
    for finetune_seed in finetune_seeds:
        tuned = model
        if args.steps:
            settings = dreamix.FinetuneSettings(prompt=tune_prompt, alpha=args.alpha, lr=args.lr, steps=args.steps,
                                                seed=finetune_seed)
            tuned, _ = dreamix.finetune(model, clip, settings, args.workdir, progress=False)
        cells = list(itertools.product(prompts, s_values, guidances, range(args.seeds)))
        requests = [dreamix.EditRequest(p, seed=seed, s=s) for p, s, _, seed in cells]
        videos, _ = dreamix.edit(tuned, clip, requests, guidance=[g for _, _, g, _ in cells])
        for (prompt, s, g, seed), video in zip(cells, videos, strict=True):
            scores = evaluate.edit_scores(video, source, prompt)
            if scores is None:
                raise ValueError(f"{prompt!r} is not in the captions' grammar; the detector cannot score it.")
            found = evaluate.detect(video)
            rows.append(dict(finetune_seed=finetune_seed, prompt=prompt, s=s, guidance=g, seed=seed, **scores,
                             success=scores["alignment"] == 1.0 and scores["fidelity"] == 1.0,
                             read=dict(dataclasses.asdict(found), start=[round(x, 3) for x in found.start])))
        print(f"finetune seed {finetune_seed}: {len(cells)} edits ({time.perf_counter() - start:.0f} s)", flush=True)

    table = []
    print(f"\n{'prompt':<50} {'s':>5} {'w':>4} {'ft seed':>7} {'success':>8} {'alignment':>10} {'fidelity':>9}")
    for prompt, s, g, finetune_seed in itertools.product(prompts, s_values, guidances, finetune_seeds):
        picked = [r for r in rows if (r["prompt"], r["s"], r["guidance"], r["finetune_seed"]) == (prompt, s, g,
                                                                                                   finetune_seed)]
        row = dict(prompt=prompt, s=s, guidance=g, finetune_seed=finetune_seed, n=len(picked),
                   successes=sum(r["success"] for r in picked),
                   alignment=float(np.mean([r["alignment"] for r in picked])),
                   fidelity=float(np.mean([r["fidelity"] for r in picked])))
        table.append(row)
        print(f"{prompt:<50} {s:>5g} {g:>4g} {finetune_seed:>7} {row['successes']:>4}/{row['n']:<3} "
              f"{row['alignment']:>10.2f} {row['fidelity']:>9.2f}")
    write_json(args.out, dict(weights=args.weights, clip=args.clip, caption=args.caption, prompts=prompts, s=s_values,
                              guidance=guidances, seeds=args.seeds, finetune_seeds=finetune_seeds,
                              finetune_prompt=tune_prompt, lr=args.lr, steps=args.steps, alpha=args.alpha,
                              table=table, rows=rows, seconds=round(time.perf_counter() - start, 1)))


if __name__ == "__main__":
    main()
