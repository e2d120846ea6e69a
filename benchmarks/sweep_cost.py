r"""What batching a sweep saves.

Sampling: 16 (s, seed) edits of the bundled clip on the shipped tiny cascade, as one sweep against
16 separate `dreamix_jax.edit` runs. Both arms do no finetuning (the pretrained cascade edits),
sample every stage at its configured steps and write their outputs (the sweep also scores its
edits and writes its report).

Finetuning: K base-stage finetunes of the bundled clip (K learning rates and seeds), stacked on a
`trial` axis in one program (`dreamix.finetune_trials`) against the same K run one after another
in one process (`dreamix.finetune`, one shared program: what a sweep with trials_per_program=1
does). Both store their finetunes.

Sampling the finetunes' edits: R edits (seeds) of each of K stored base-stage finetunes, stacked in
one program per stage (`dreamix.edit_trials`: the K U-Nets on a `trial` axis, the batch in K row
groups; what a sweep with trials_per_program=K does) against K `dreamix.edit` calls of R edits,
one per finetune, in one process (trials_per_program=1). Every stage samples at its configured
steps; the K finetunes (1 step each) are trained beforehand, outside both arms' timing. Each arm
samples twice: the first time compiles, the second ("again") is what every later batch costs.

Every arm starts fresh Python processes with the same environment and no persistent compilation
cache. Each process reports its XLA compilations (all programs; the stage samplers or the
finetuning step programs alone); the wall time of each process is measured from outside,
start-up and model loading included; the finetuning arms also time their finetuning alone, and
the trial-sampling arms their sampling alone (with its compiles).

  python benchmarks/sweep_cost.py                 # tables + benchmarks/results/sweep_cost.json
  python benchmarks/sweep_cost.py --runs 4        # fewer separate edit runs, for a quick look
  python benchmarks/sweep_cost.py --arms finetune --finetunes 4
  python benchmarks/sweep_cost.py --arms trial-sampling --finetunes 2 --trial-edits 2
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

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from results_io import write_json  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROMPT = "a blue circle moving right on a gray background"
S_VALUES = (0.5, 0.6, 0.7, 0.8)
SEEDS = (0, 1, 2, 3)

# Runs in a fresh process: one edit (settings as JSON in argv[2]), the whole sweep, K finetunes
# stacked or in sequence, or the edits of K stored finetunes stacked or in sequence, then prints its
# compile counts. Importing dreamix_jax.sweep registers the compile listener before any work.
_CHILD = """
import json, sys, time
import numpy as np
from configs import dreamix as dreamix_configs
from configs.sweeps import shapes_edit
from dreamix_jax import cascade, dreamix, edit, pretrained, sharding, sweep
mode, settings, workdir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
finetune_seconds = sample_seconds = sample_compiles = warm_seconds = None
if mode in ("stacked", "sequence", "edit-stacked", "edit-sequence"):
    model = pretrained.load()
    clip = edit.read_input(dreamix_configs.get_config("video"))[0]
    runs = [dreamix.FinetuneSettings(lr=lr, seed=seed, steps=settings["steps"], stages=("base",))
            for lr, seed in zip(settings["lr"], settings["seed"])]
if mode in ("edit-stacked", "edit-sequence"):
    tuned = [dreamix.finetune(model, clip, run, workdir, progress=False)[0] for run in runs]  # stored: loaded
    requests = [dreamix.EditRequest(settings["prompt"], seed=seed, s=0.8) for seed in range(settings["edits"])]
    mesh = sharding.make_trial_mesh(len(runs), (-1, 1, 1))
    sample = (lambda: dreamix.edit_trials(tuned, clip, requests * len(runs), mesh=mesh)[0]) if mode == "edit-stacked" \
        else (lambda: np.concatenate([dreamix.edit(t, clip, requests)[0] for t in tuned]))
    before, start = sweep.compile_count(), time.perf_counter()
    videos = sample()
    sample_seconds, sample_compiles = round(time.perf_counter() - start, 1), sweep.compile_count() - before
    start = time.perf_counter()
    sample()  # again, compiled: what every later batch of a sweep costs
    warm_seconds = round(time.perf_counter() - start, 1)
    np.save(f"{workdir}/{mode}.npy", videos)
elif mode in ("stacked", "sequence"):
    start = time.perf_counter()
    if mode == "stacked":
        dreamix.finetune_trials(model, clip, runs, workdir, progress=False)
    else:
        for run in runs:
            dreamix.finetune(model, clip, run, workdir, progress=False)
    finetune_seconds = round(time.perf_counter() - start, 1)
elif mode == "sweep":
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
print("COUNTS", json.dumps(dict(compiles=sweep.compile_count(), sampler=cascade._sample_chunk._cache_size(),
                                stacked_sampler=cascade._sample_chunks._cache_size(),
                                step_programs=dreamix._finetune_step.cache_info().currsize,
                                finetune_seconds=finetune_seconds, sample_seconds=sample_seconds,
                                sample_compiles=sample_compiles, warm_seconds=warm_seconds)))
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


def sampling_arms(runs: int, scratch: str) -> dict:
    """One 16-edit sweep against `runs` separate edit runs: their table and JSON."""
    settings = [dict(prompt=PROMPT, s=s, seed=seed) for s, seed in itertools.product(S_VALUES, SEEDS)]
    print(f"Sweep: {len(settings)} edits in one process ...", flush=True)
    batched = run_child("sweep", dict(prompt=PROMPT, s=S_VALUES, seed=SEEDS), f"{scratch}/sweep")
    separate = []
    for i, one in enumerate(settings[:runs]):
        print(f"Separate run {i + 1}/{runs}: s={one['s']} seed={one['seed']} ...", flush=True)
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
    return dict(edits=len(settings), s_values=S_VALUES, seeds=SEEDS, prompt=PROMPT, sweep=batched, separate=separate,
                seconds_per_edit=per_edit, separate_over_sweep=round(ratio, 2))


def finetune_arms(count: int, steps: int, scratch: str) -> dict:
    """`count` base-stage finetunes stacked in one program against the same run in sequence: their table and JSON."""
    settings = dict(lr=[1e-4 * (i + 1) for i in range(count)], seed=list(range(count)), steps=steps)
    arms = {}
    for mode, name in (("stacked", f"{count} finetunes stacked"), ("sequence", f"{count} finetunes in sequence")):
        print(f"{name}, {steps} steps each ...", flush=True)
        arms[mode] = dict(name=name, **run_child(mode, settings, f"{scratch}/{mode}"))
    print(f"\n{'arm':<26} {'finetunes':>9} {'XLA compiles':>12} {'step programs':>13} {'finetune s':>10} "
          f"{'wall s':>8} {'s per finetune':>14}")
    for arm in arms.values():
        print(f"{arm['name']:<26} {count:>9} {arm['compiles']:>12} {arm['step_programs']:>13} "
              f"{arm['finetune_seconds']:>10.1f} {arm['seconds']:>8.1f} {arm['finetune_seconds'] / count:>14.1f}")
    ratio = arms["sequence"]["finetune_seconds"] / arms["stacked"]["finetune_seconds"]
    print(f"\nFinetuning in sequence takes {ratio:.2f}x as long as the stacked program.")
    return dict(finetunes=count, steps=steps, stage="base", lr=settings["lr"], stacked=arms["stacked"],
                sequence=arms["sequence"], sequence_over_stacked=round(ratio, 2))


def trial_sampling_arms(count: int, edits: int, scratch: str) -> dict:
    """`edits` edits of each of `count` stored finetunes sampled stacked against in sequence: their table and JSON."""
    settings = dict(lr=[1e-4 * (i + 1) for i in range(count)], seed=list(range(count)), steps=1, prompt=PROMPT,
                    edits=edits)
    workdir = f"{scratch}/trial_sampling"
    print(f"Training {count} finetunes (1 step each, stacked; not timed) ...", flush=True)
    run_child("stacked", settings, workdir)
    arms = {}
    for mode, name in (("edit-stacked", f"{count} finetunes' edits stacked"),
                       ("edit-sequence", f"{count} finetunes' edits in sequence")):
        print(f"{name}, {edits} edits each ...", flush=True)
        arms[mode] = dict(name=name, **run_child(mode, settings, workdir))
    difference = float(np.abs(np.load(f"{workdir}/edit-stacked.npy") - np.load(f"{workdir}/edit-sequence.npy")).max())
    print(f"\n{'arm':<34} {'edits':>5} {'XLA compiles':>12} {'sampling compiles':>17} {'sampler programs':>16} "
          f"{'sampling s':>10} {'again s':>7} {'wall s':>8}")
    for arm in arms.values():
        programs = arm["sampler"] + arm["stacked_sampler"]
        print(f"{arm['name']:<34} {count * edits:>5} {arm['compiles']:>12} {arm['sample_compiles']:>17} "
              f"{programs:>16} {arm['sample_seconds']:>10.1f} {arm['warm_seconds']:>7.1f} {arm['seconds']:>8.1f}")
    ratio = {k: arms["edit-sequence"][k] / arms["edit-stacked"][k] for k in ("sample_seconds", "warm_seconds")}
    print(f"\nSampling in sequence takes {ratio['sample_seconds']:.2f}x as long as the stacked programs (compiled: "
          f"{ratio['warm_seconds']:.2f}x); the videos differ by at most {difference:.2g}.")
    return dict(finetunes=count, edits_per_finetune=edits, stage="base", stacked=arms["edit-stacked"],
                sequence=arms["edit-sequence"], sequence_over_stacked=round(ratio["sample_seconds"], 2),
                sequence_over_stacked_compiled=round(ratio["warm_seconds"], 2), max_difference=difference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", choices=("sampling", "finetune", "trial-sampling"),
                        default=["sampling", "finetune", "trial-sampling"])
    parser.add_argument("--runs", type=int, default=len(S_VALUES) * len(SEEDS),
                        help="separate runs to time (the first ones of the 16 settings); the sweep always does 16")
    parser.add_argument("--finetunes", type=int, default=4, help="finetunes stacked in one program (K)")
    parser.add_argument("--trial-edits", type=int, default=2, help="edits of each finetune in the trial-sampling arms")
    parser.add_argument("--finetune-steps", type=int, default=10, help="finetuning steps of each")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "sweep_cost.json"))
    args = parser.parse_args()

    results = dict(cpu_count=os.cpu_count())
    with tempfile.TemporaryDirectory() as scratch:
        if "sampling" in args.arms:
            results.update(sampling_arms(args.runs, scratch))
        if "finetune" in args.arms:
            results["finetune"] = finetune_arms(args.finetunes, args.finetune_steps, scratch)
        if "trial-sampling" in args.arms:
            results["trial_sampling"] = trial_sampling_arms(args.finetunes, args.trial_edits, scratch)
    path = write_json(args.out, results)
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
