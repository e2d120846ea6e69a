r"""What batching a sampling sweep saves: 16 (s, seed) edits of the bundled clip on the shipped tiny
cascade, as one sweep against 16 separate `dreamix_jax.edit` runs.

Both arms start fresh Python processes with the same environment and no persistent compilation
cache, do no finetuning (the pretrained cascade edits), sample every stage at its configured
steps and write their outputs (the sweep also scores its edits and writes its report). Each
process reports its XLA compilations (all programs, and the stage samplers alone); the wall time
of each process is measured from outside, start-up and model loading included.

  python benchmarks/sweep_cost.py            # table + benchmarks/results/sweep_cost.json
  python benchmarks/sweep_cost.py --runs 4   # fewer separate runs, for a quick look
"""

import argparse
import itertools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from results_io import write_json  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROMPT = "a blue circle moving right on a gray background"
S_VALUES = (0.5, 0.6, 0.7, 0.8)
SEEDS = (0, 1, 2, 3)

# Runs in a fresh process: one edit (settings as JSON in argv[2]) or the whole sweep, then prints
# its compile counts. Importing dreamix_jax.sweep registers the compile listener before any work.
_CHILD = """
import json, sys
from configs import dreamix as dreamix_configs
from configs.sweeps import shapes_edit
from dreamix_jax import cascade, edit, sweep
mode, settings, workdir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
if mode == "sweep":
    config = shapes_edit.get_config("default")
    config.finetune = dict(steps=(0,))
    config.sample = dict(s=settings["s"], seed=settings["seed"], prompt=(settings["prompt"],))
    config.batch_size = len(settings["s"]) * len(settings["seed"])
    sweep.run(config, workdir)
else:
    config = dreamix_configs.get_config("video")
    config.prompt, config.s, config.seed = settings["prompt"], settings["s"], settings["seed"]
    config.finetune.steps = 0
    edit.run(config, workdir)
print("COUNTS", json.dumps(dict(compiles=sweep.compile_count(), sampler=cascade._sample_chunk._cache_size())))
"""


def run_child(mode: str, settings: dict, workdir: str) -> dict:
    """Wall time and compile counts of one fresh process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, mode, json.dumps(settings), workdir], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"The {mode} process failed:\n{done.stderr[-3000:]}")
    counts = json.loads(done.stdout.split("COUNTS", 1)[1])
    return dict(seconds=round(seconds, 1), **counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=len(S_VALUES) * len(SEEDS),
                        help="separate runs to time (the first ones of the 16 settings); the sweep always does 16")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "sweep_cost.json"))
    args = parser.parse_args()
    settings = [dict(prompt=PROMPT, s=s, seed=seed) for s, seed in itertools.product(S_VALUES, SEEDS)]

    with tempfile.TemporaryDirectory() as scratch:
        print(f"Sweep: {len(settings)} edits in one process ...", flush=True)
        batched = run_child("sweep", dict(prompt=PROMPT, s=S_VALUES, seed=SEEDS), f"{scratch}/sweep")
        separate = []
        for i, one in enumerate(settings[:args.runs]):
            print(f"Separate run {i + 1}/{args.runs}: s={one['s']} seed={one['seed']} ...", flush=True)
            separate.append(run_child("edit", one, f"{scratch}/edit{i}"))

    per_edit = dict(sweep=batched["seconds"] / len(settings),
                    separate=sum(r["seconds"] for r in separate) / len(separate))
    rows = [("one sweep, batch 16", 1, len(settings), batched["compiles"], batched["sampler"], batched["seconds"],
             per_edit["sweep"]),
            (f"separate runs (x{len(separate)})", len(separate), len(separate), sum(r["compiles"] for r in separate),
             sum(r["sampler"] for r in separate), sum(r["seconds"] for r in separate), per_edit["separate"])]
    print(f"\n{'arm':<24} {'processes':>9} {'edits':>5} {'XLA compiles':>12} {'sampler compiles':>16} "
          f"{'wall s':>8} {'s per edit':>10}")
    for name, processes, edits, compiles, sampler, seconds, each in rows:
        print(f"{name:<24} {processes:>9} {edits:>5} {compiles:>12} {sampler:>16} {seconds:>8.1f} {each:>10.1f}")
    ratio = per_edit["separate"] / per_edit["sweep"]
    print(f"\nPer edit, separate runs cost {ratio:.1f}x the batched sweep.")
    path = write_json(args.out, dict(
        edits=len(settings), s_values=S_VALUES, seeds=SEEDS, prompt=PROMPT, sweep=batched, separate=separate,
        seconds_per_edit=per_edit, separate_over_sweep=round(ratio, 2), cpu_count=os.cpu_count()))
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
