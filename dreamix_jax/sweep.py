r"""Resumable sweeps over Dreamix's finetuning and sampling settings, with a visual report.

  python -m dreamix_jax.sweep --config configs/sweeps/shapes_edit.py --workdir /tmp/sweep

A sweep config (configs/sweeps/) holds the edit config it sweeps (`config.edit`: input, weights,
defaults) and two sections of value lists: `finetune` (lr, alpha, w_video, steps, seed) and
`sample` (s, guidance, seed, prompt). `mode` "grid" takes every combination of a section's lists,
"list" pairs them up (lists of one length). A trial is one finetuning setting with one sampling
setting.

How the work is shared:
- Finetuning settings that differ only in `steps` are one run, stored at each step count.
  Every trial reuses one compiled step per stage and objective (lr and α are traced).
- Runs that share the prompt, the finetuned stages and the objective paths train
  `trials_per_program` at a time in one program, their weights stacked on a `trial` mesh axis
  (`dreamix.finetune_trials`), and their edits are sampled stacked the same way
  (`dreamix.edit_trials`); 1 trains and samples them one after another.
- The sampling settings of one finetuned cascade run in batches of `batch_size` (the last one
  padded); stacked, a batch holds such a row group of each of K finetunes (K: the largest stack
  the full trial list makes; the last batch padded with its last group). s, guidance, seed and
  prompt are data, so sampling compiles exactly once per stage, twice where some runs stack and
  others cannot (the stacked and the plain program).

The workdir holds `manifest.json` (finished trials, rewritten atomically after every batch),
`finetunes/` (shared with `dreamix_jax.edit`), `trials/<id>/{video.mp4, thumb.gif}` and
`report.html` with its `fidelity_alignment.png`. Running again skips finished trials, so an
interrupted sweep loses at most the batch in flight. Edits of synthetic clips (prompts in the
dataset's caption grammar) are scored by the attribute detector; every edit also gets model-free
scores (PSNR and SSIM of its degraded output against the degraded input, frame consistency).
The workdir may be local or gs:// (`dreamix_jax.workdir`). On a multi-host slice every host runs
the same command with `--config.edit.distributed=True` and a workdir they all see (gs://): every
process runs every trial on the devices of all of them, and process 0 alone writes the workdir.
"""

import collections
import dataclasses
import hashlib
import html
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from jax.sharding import Mesh
from ml_collections import config_flags

from dreamix_jax import cascade, cli, dreamix, edit, evaluate, pretrained
from dreamix_jax import workdir as workdir_lib
from dreamix_jax.data import video_io
from dreamix_jax.sharding import agree, initialize_distributed, is_lead, make_mesh, make_trial_mesh, sync

log = logging.getLogger(__name__)

FINETUNE_KEYS = ("lr", "alpha", "w_video", "steps", "seed")
SAMPLE_KEYS = ("s", "guidance", "seed", "prompt")
MODES = ("grid", "list")


# ------------------------------------------------------------------------------------------------
# Trials.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trial:
    """One finetuning setting and one sampling setting."""

    finetune: dreamix.FinetuneSettings
    request: dreamix.EditRequest
    guidance: float

    @property
    def settings(self) -> dict[str, Any]:
        return dict(finetune=dataclasses.asdict(self.finetune), sample=dict(
            prompt=self.request.prompt, seed=self.request.seed, s=self.request.s, guidance=self.guidance))

    @property
    def id(self) -> str:
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]


def combinations(section: Mapping[str, Sequence[Any]], keys: Sequence[str], mode: str,
                 name: str) -> list[dict[str, Any]]:
    """The settings a section of value lists stands for: every combination ("grid") or paired ("list")."""
    unknown = sorted(set(section) - set(keys))
    if unknown:
        raise ValueError(f"Unknown {name} settings {unknown}; a sweep varies {list(keys)}.")
    if mode not in MODES:
        raise ValueError(f"Unknown sweep mode {mode!r}; choose one of {MODES}.")
    lists = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in section.items()}
    empty = [k for k, v in lists.items() if not v]
    if empty:
        raise ValueError(f"The {name} setting {empty[0]!r} has no values.")
    if mode == "grid":
        return [dict(zip(lists, values)) for values in itertools.product(*lists.values())]
    lengths = {len(v) for v in lists.values()}
    if len(lengths) > 1:
        raise ValueError(f"In list mode every {name} list must have one length; got {sorted(lengths)}.")
    return [dict(zip(lists, values)) for values in zip(*lists.values())]


def trials_of(config: ml_collections.ConfigDict, stages: Sequence[cascade.Stage]) -> list[Trial]:
    """Every trial of a sweep config on a cascade of `stages`, finetuning settings outermost;
    checked before any compute."""
    base_settings = edit.finetune_settings(config.edit)
    default_prompts = [p.strip() for p in config.edit.prompt.split(";") if p.strip()]
    trials = []
    for tune in combinations(config.finetune, FINETUNE_KEYS, config.mode, "finetune"):
        settings = dataclasses.replace(base_settings, **tune)
        dreamix.check_finetune(settings, stages)
        for sample in combinations(config.sample, SAMPLE_KEYS, config.mode, "sample"):
            prompts = [sample["prompt"]] if "prompt" in sample else default_prompts
            request_args = dict(seed=sample.get("seed", config.edit.seed), s=sample.get("s", config.edit.s))
            dreamix.check_edit_args(prompts, [request_args["s"]])
            guidance = float(sample.get("guidance", config.edit.guidance or stages[0].guidance))
            if not (math.isfinite(guidance) and guidance >= 0):
                raise ValueError(f"guidance {guidance!r} in the sweep is not a finite weight ≥ 0.")
            trials += [Trial(settings, dreamix.EditRequest(p, **request_args), guidance) for p in prompts]
    ids = [t.id for t in trials]
    if len(set(ids)) != len(ids):
        raise ValueError("The sweep lists the same trial twice; remove the repeated values.")
    return trials


def batches(items: Sequence[Any], size: int) -> Iterator[tuple[list[Any], int]]:
    """Consecutive batches of exactly `size` (the last padded with its last item) and how many are real."""
    for start in range(0, len(items), size):
        chunk = list(items[start:start + size])
        yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


# ------------------------------------------------------------------------------------------------
# Compile counting (what the one-compile-per-stage promise is checked with).
# ------------------------------------------------------------------------------------------------

_COMPILES = collections.Counter()
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _on_event(event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _COMPILE_EVENT:
        _COMPILES["backend"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def compile_count() -> int:
    """XLA backend compilations in this process so far (persistent-cache hits are not compilations)."""
    return _COMPILES["backend"]


# ------------------------------------------------------------------------------------------------
# Outputs: atomic files, the manifest, scores.
# ------------------------------------------------------------------------------------------------


def read_manifest(workdir: str | os.PathLike) -> dict[str, Any]:
    """Finished trials by id (empty for a new sweep)."""
    # An unreadable manifest counts as none: its trials run again.
    manifest = workdir_lib.read_json_or_none(workdir_lib.as_path(workdir) / "manifest.json")
    trials = manifest.get("trials") if isinstance(manifest, dict) else None
    return trials if isinstance(trials, dict) else {}


def _score(output: np.ndarray, source: np.ndarray, prompt: str, model: pretrained.Cascade) -> dict[str, float]:
    """Detector scores where the prompt is a synthetic caption, and model-free scores always."""
    shrink = lambda clip: np.asarray(cascade.degrade(jnp.asarray(clip)[None], model.base)[0])  # noqa: E731
    small_output, small_source = shrink(output), shrink(source)
    scores = dict(psnr=round(evaluate.psnr(small_output, small_source), 3),
                  ssim=round(evaluate.ssim(small_output, small_source), 4),
                  consistency=round(evaluate.frame_consistency(output), 4))
    return {**(evaluate.edit_scores(output, source, prompt) or {}), **scores}


def _caption(trial: Trial) -> str:
    tune = trial.finetune
    return (f"lr {tune.lr:g} a {tune.alpha:g} w {tune.w_video:g} {tune.steps} st | s {trial.request.s:g} "
            f"g {trial.guidance:g} seed {trial.request.seed}")


# ------------------------------------------------------------------------------------------------
# The sweep.
# ------------------------------------------------------------------------------------------------


def _runs(trials: Sequence[Trial]) -> dict[dreamix.FinetuneSettings, list[Trial]]:
    """Trials by run (their finetuning settings at 0 steps): settings that differ only in steps are one run."""
    runs: dict[dreamix.FinetuneSettings, list[Trial]] = collections.defaultdict(list)
    for trial in trials:
        runs[dataclasses.replace(trial.finetune, steps=0)].append(trial)
    return runs


def _chunks(model: pretrained.Cascade, runs: Mapping[dreamix.FinetuneSettings, list[Trial]],
            per_program: int) -> list[list[dreamix.FinetuneSettings]]:
    """The runs in chunks that finetune together: those that can share a program (`dreamix.stack_key`)
    `per_program` at a time, in the order of their first runs."""
    stacks: dict[tuple[Any, ...], list[dreamix.FinetuneSettings]] = collections.defaultdict(list)
    for run_settings, group in runs.items():
        longest = dataclasses.replace(run_settings, steps=max(t.finetune.steps for t in group))
        stacks[dreamix.stack_key(longest, model.stages)].append(run_settings)
    order = list(runs)
    return sorted((chunk[i:i + per_program] for chunk in stacks.values() for i in range(0, len(chunk), per_program)),
                  key=lambda chunk: order.index(chunk[0]))


# What one sampled batch gives for each of its real rows: the trial, its video, its finetune's key and
# the batch's seconds per stage.
Edited = list[tuple[Trial, np.ndarray, str, dict[str, float]]]


def _edit_run(model: pretrained.Cascade, clip: np.ndarray, group: Sequence[Trial], batch_size: int,
              workdir: epath.Path) -> Iterator[Edited]:
    """One run's edits, `batch_size` at a time with its finetune at each step count; the run is trained
    first (once, stored at every count) unless it is stored."""
    counts = sorted({t.finetune.steps for t in group})
    longest = dataclasses.replace(group[0].finetune, steps=counts[-1])
    if counts[-1]:
        dreamix.finetune(model, clip, longest, workdir, also_at=[k for k in counts[:-1] if k], progress=is_lead())
    for steps in counts:
        # Stored above: loaded, not trained.
        tuned, record = dreamix.finetune(model, clip, dataclasses.replace(longest, steps=steps), workdir,
                                         progress=is_lead())
        for padded, real in batches([t for t in group if t.finetune.steps == steps], batch_size):
            videos, seconds = dreamix.edit(tuned, clip, [t.request for t in padded],
                                           guidance=[t.guidance for t in padded])
            yield [(t, video, record["key"], seconds) for t, video in zip(padded[:real], videos[:real], strict=True)]


def _edit_stacked(model: pretrained.Cascade, clip: np.ndarray, groups: Sequence[Sequence[Trial]], batch_size: int,
                  stack: int, mesh: Mesh, workdir: epath.Path) -> Iterator[Edited]:
    """The edits of runs finetuned together (stored): row groups of `batch_size` edits of one finetune
    (run and step count), `stack` of them sampled in one program (`dreamix.edit_trials` on `mesh`), the
    last program's groups padded with its last."""
    trials = [t for group in groups for t in group]
    row_groups = [(settings, padded, real) for settings in dict.fromkeys(t.finetune for t in trials)
                  for padded, real in batches([t for t in trials if t.finetune == settings], batch_size)]
    for program, used in batches(row_groups, stack):
        # Stored by the stacked finetune: loaded, not trained; once per program.
        tuned = {s: dreamix.finetune(model, clip, s, workdir, progress=is_lead())
                 for s in dict.fromkeys(s for s, _, _ in program)}
        videos, seconds = dreamix.edit_trials([tuned[s][0] for s, _, _ in program], clip,
                                              [t.request for _, padded, _ in program for t in padded], mesh=mesh,
                                              guidance=[t.guidance for _, padded, _ in program for t in padded])
        yield [(t, videos[g * batch_size + row], tuned[s][1]["key"], seconds)
               for g, (s, padded, real) in enumerate(program[:used]) for row, t in enumerate(padded[:real])]


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, model: pretrained.Cascade | None = None,
        on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the trials the manifest does not hold yet, then write the report; returns the manifest."""
    started, compiles_before = time.perf_counter(), compile_count()
    workdir = workdir_lib.as_path(workdir)
    if config.edit.variant != "video":
        raise ValueError("Sweeps edit videos; set edit.variant to 'video'.")
    if config.batch_size < 1:
        raise ValueError(f"batch_size is {config.batch_size}; use at least 1.")
    per_program = config.get("trials_per_program", 1)
    if per_program < 1:
        raise ValueError(f"trials_per_program is {per_program}; use at least 1 (1 finetunes one run at a time).")
    edit.check_sampling(config.edit)
    weights = config.edit.weights or pretrained.SHIPPED
    trials = trials_of(config, model.stages if model else pretrained.read_stages(weights))
    clip, _, source_path = edit.read_input(config.edit)
    initialize_distributed(config.edit)
    model = edit.with_sampling_steps(
        model or pretrained.load(weights, make_mesh(config.edit.mesh.shape), cache_dir=workdir / "prompt_cache"),
        config.edit.sampling_steps)
    for notice in edit.fit_notices(clip, model.final):
        log.warning(notice)
    source = np.asarray(cascade.degrade(jnp.asarray(clip)[None], model.final)[0])
    sync("sweep: the manifest is written")  # by the lead, at the end of a run before this one
    done = read_manifest(workdir)
    # Every process must run the same trials: one counts as finished only where all of them read it so.
    pending = [t for t in trials if not agree(t.id in done)]
    log.info("%d trials, %d finished earlier, %d to run.", len(trials), len(trials) - len(pending), len(pending))
    if is_lead():
        video_io.write_video(workdir / "input.gif", video_io.to_uint8(source), model.final.fps, scale=2)

    # One batch shape for the whole sweep (fixed by the full trial list, so a resumed run keeps it): row
    # groups of `batch_size` edits of one finetune, `stack` of them in a program where runs finetune together.
    batch_size = min(config.batch_size, max(collections.Counter(t.finetune for t in trials).values()))
    # A run is sampled stacked when the full trial list stacks it with others, so a resumed sweep samples
    # its last run of a stack in the program the others used.
    chunks = _chunks(model, _runs(trials), per_program)
    stack = max(len(chunk) for chunk in chunks)
    stacked_runs = {r for chunk in chunks if len(chunk) > 1 for r in chunk}
    # One trial mesh for every stacked finetune and sampling: a chunk with fewer runs fills it with
    # repeats (`dreamix.finetune_trials`), so a short last chunk reuses the others' programs.
    trial_mesh = make_trial_mesh(stack, config.edit.mesh.shape) if stack > 1 else None
    runs = _runs(pending)

    batch_index = 0
    for chunk in _chunks(model, runs, per_program):
        stacked = all(r in stacked_runs for r in chunk)
        if len(chunk) > 1 or stacked:  # it skips the finetunes stored earlier
            settings = list(dict.fromkeys(t.finetune for r in chunk for t in runs[r]))
            dreamix.finetune_trials(model, clip, settings, workdir, mesh=trial_mesh)
        if stacked:
            edited = _edit_stacked(model, clip, [runs[r] for r in chunk], batch_size, stack, trial_mesh, workdir)
        else:  # runs that stack with none, or only now (a resumed sweep's): each alone, in the sweep's one shape
            edited = itertools.chain.from_iterable(_edit_run(model, clip, runs[r], batch_size, workdir) for r in chunk)
        for results in edited:
            for trial, video, key, seconds in results:
                if is_lead():  # every process holds the same videos; one writes them
                    folder = workdir / "trials" / trial.id
                    video_io.write_video(folder / "video.mp4", video, model.final.fps)
                    thumb = np.stack([video_io.label(f, _caption(trial)[:26]) for f in video_io.to_uint8(video)])
                    video_io.write_video(folder / "thumb.gif", thumb, model.final.fps, scale=1)
                done[trial.id] = dict(settings=trial.settings, finetune_key=key,
                                      scores=_score(video, source, trial.request.prompt, model),
                                      video=f"trials/{trial.id}/video.mp4", thumb=f"trials/{trial.id}/thumb.gif",
                                      batch_seconds=seconds)
            if is_lead():
                workdir_lib.write_json_atomic(workdir / "manifest.json", dict(trials=done))
            batch_index += 1
            log.info("Batch %d done: %d of %d trials finished.", batch_index, len(done), len(trials))
            if on_batch is not None:
                on_batch(batch_index)

    finished = {t.id: done[t.id] for t in trials}
    summary = dict(trials=len(trials), ran=len(pending), batch_size=batch_size, finetunes_per_batch=stack,
                   batches=batch_index, compiles=compile_count() - compiles_before,
                   seconds=round(time.perf_counter() - started, 1), input=source_path)
    if is_lead():
        write_report(workdir, config, trials, finished, summary)
        workdir_lib.write_json_atomic(workdir / "summary.json", summary)
    return finished


# ------------------------------------------------------------------------------------------------
# The report.
# ------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def write_plot(path: epath.Path, trials: Sequence[Trial], results: Mapping[str, Any]) -> epath.Path:
    """Fidelity against alignment (detector scores; SSIM and frame consistency where there are none),
    averaged over seeds and prompts, one line per α through the values of s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synthetic = all("alignment" in results[t.id]["scores"] for t in trials)
    x_name, y_name = ("fidelity", "alignment") if synthetic else ("ssim", "consistency")
    points: dict[float, dict[float, list[tuple[float, float]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for t in trials:
        scores = results[t.id]["scores"]
        points[t.finetune.alpha][t.request.s].append((scores[x_name], scores[y_name]))
    figure, axes = plt.subplots(figsize=(5.5, 4.2), dpi=100)
    for alpha, by_s in sorted(points.items()):
        s_values = sorted(by_s)
        xs = [_mean([p[0] for p in by_s[s]]) for s in s_values]
        ys = [_mean([p[1] for p in by_s[s]]) for s in s_values]
        axes.plot(xs, ys, marker="o", label=f"α = {alpha:g}")
        for x, y, s in zip(xs, ys, s_values, strict=True):
            axes.annotate(f"s={s:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlabel(f"{x_name} (mean over seeds and prompts)")
    axes.set_ylabel(y_name)
    if synthetic:
        axes.set_xlim(-0.05, 1.05)
        axes.set_ylim(-0.05, 1.05)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with workdir_lib.atomic_path(path) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return path


def write_report(workdir: epath.Path, config: ml_collections.ConfigDict, trials: Sequence[Trial],
                 results: Mapping[str, Any], summary: Mapping[str, Any]) -> epath.Path:
    """`report.html`: the plot, a contact sheet (finetuning settings × sampling settings) and the metric table."""
    plot = write_plot(workdir / "fidelity_alignment.png", trials, results)
    esc = html.escape
    rows = list(dict.fromkeys(json.dumps(t.settings["finetune"], sort_keys=True) for t in trials))
    columns = list(dict.fromkeys(json.dumps(t.settings["sample"], sort_keys=True) for t in trials))
    cell = {(json.dumps(t.settings["finetune"], sort_keys=True), json.dumps(t.settings["sample"], sort_keys=True)): t
            for t in trials}
    metric_names = list(dict.fromkeys(k for t in trials for k in results[t.id]["scores"]))

    def describe(settings: str, keys: Sequence[str]) -> str:
        values = json.loads(settings)
        return "<br>".join(f"{k} {esc(str(values[k]))}" for k in keys)

    sheet = ["<table class=sheet><tr><th>finetune \\ sample</th>"]
    sheet += [f"<th>{describe(c, ('prompt', 's', 'guidance', 'seed'))}</th>" for c in columns]
    sheet.append("</tr>")
    for r in rows:
        sheet.append(f"<tr><th>{describe(r, ('lr', 'alpha', 'w_video', 'steps'))}</th>")
        for c in columns:
            t = cell.get((r, c))
            if t is None:
                sheet.append("<td></td>")
                continue
            scores = results[t.id]["scores"]
            shown = " · ".join(f"{k} {scores[k]:.2f}" for k in ("alignment", "fidelity", "ssim") if k in scores)
            sheet.append(f"<td><img src='{results[t.id]['thumb']}' width=128><br><small>{esc(shown)}</small></td>")
        sheet.append("</tr>")
    sheet.append("</table>")

    head = ["trial", "lr", "α", "w_video", "steps", "prompt", "s", "guidance", "seed", *metric_names]
    table = ["<table class=metrics><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for t in trials:
        scores = results[t.id]["scores"]
        values = [f"<a href='{results[t.id]['video']}'>{t.id}</a>", f"{t.finetune.lr:g}", f"{t.finetune.alpha:g}",
                  f"{t.finetune.w_video:g}", str(t.finetune.steps), esc(t.request.prompt), f"{t.request.s:g}",
                  f"{t.guidance:g}", str(t.request.seed), *(f"{scores.get(m, float('nan')):.3f}" for m in metric_names)]
        table.append("<tr>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>")
    table.append("</table>")

    groups = summary["finetunes_per_batch"]
    stacked = f" edits of each of up to {groups} finetunes sampled together" if groups > 1 else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Dreamix sweep: {esc(workdir.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px; text-align: center; vertical-align: top; font-size: 12px; }}
.metrics td {{ font-family: monospace; }}
</style></head><body>
<h1>Dreamix sweep</h1>
<p>{summary['trials']} trials ({summary['ran']} run now, in {summary['batches']} batches of {summary['batch_size']}{stacked};
{summary['compiles']} XLA compilations; {summary['seconds']} s). Input: {esc(str(summary['input']))}.</p>
<p><img src="input.gif" alt="input"> the input at the output size.</p>
<h2>Fidelity against alignment</h2>
<p><img src="{plot.name}" alt="fidelity against alignment"></p>
<h2>Contact sheet</h2>
{''.join(sheet)}
<h2>Metrics</h2>
<p>alignment: share of the prompt's colour, shape, direction and background the detector reads in the output;
fidelity: share of size and start position kept from the input; psnr / ssim: the output against the input,
both degraded to the base stage; consistency: SSIM of consecutive output frames.</p>
{''.join(table)}
<h2>Config</h2><pre>{esc(config.to_json_best_effort(indent=2))}</pre>
</body></html>
"""
    path = workdir / "report.html"
    workdir_lib.write_text_atomic(path, page)
    return path


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    del argv
    config, workdir = cli.flag_values("configs/sweeps/shapes_edit.py")
    cli.run(run, config, workdir, purpose="sweep")
    if is_lead():
        print(workdir_lib.as_path(workdir) / "report.html")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "A sweep config, e.g. configs/sweeps/shapes_edit.py.")
    flags.DEFINE_string("workdir", None, "Where finetunes, trial outputs, the manifest and the report go.")
    cli.run_app(main)
