"""Dreamix: finetune a cascade on the input, then edit by sampling from the degraded, noised input.

Composes the existing pieces and owns no layers:

- `finetune`: the marked stages (default: the base and the SR stages the cascade config marks)
  learn the input with a rare-token prompt and the mixed objective `w_video · L_video + α ·
  L_frames` (video-only, mixed and frames-only are three settings of the two weights). The
  result is stored under the workdir, keyed by the input and the settings, and reused.
- `finetune_trials`: several such finetunes of one input (other lr, α, seed, steps) trained at
  once, one program per stage, their weights stacked on the `trial` mesh axis; stored as
  `finetune` stores them.
- `edit`: `degrade` → noise to `s` → the base stage from `s` with the target prompt → every SR
  stage. Prompts, seeds and `s` values run as one batch; example i's noise depends only on its
  own seed, so a batch equals its edits run one by one.
- `edit_trials`: the edits of K finetuned cascades at once, one program per stage, their U-Nets
  stacked on the `trial` axis and the batch in K row groups (group k with finetune k).
- `animate`: one image → a clip by a smooth camera motion (perspective warps with reflection
  padding) or by repetition; frames-only finetuning; then `edit`.
- `subject`: images of one subject → frames-only finetuning → sampling from pure noise (`s = 1`).
"""

import collections
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from etils import epath
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dreamix_jax import cascade, objective
from dreamix_jax import workdir as workdir_lib
from dreamix_jax.pretrained import Cascade
from dreamix_jax.sharding import (
    TRIAL_AXIS,
    agree,
    from_host,
    is_lead,
    make_trial_mesh,
    on_mesh,
    over_trials,
    place_batch,
    stack_trials,
    sync,
    to_host,
    trial_shardings,
)
from dreamix_jax.text import weights_fingerprint

log = logging.getLogger(__name__)

CAMERA_MOTIONS = ("none", "pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out", "rotate")


# ------------------------------------------------------------------------------------------------
# Settings and checks.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """How the cascade learns the input; `steps` 0 skips finetuning."""

    prompt: str = "sks"  # the rare-token prompt the input is learned under
    w_video: float = 1.0  # weight of the whole-clip loss
    alpha: float = 1.0  # weight of the independent-frames loss
    lr: float = 2e-4
    steps: int = 40
    stages: tuple[str, ...] = ()  # empty: the stages the cascade config marks `finetune`
    seed: int = 0

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p, w in (("video", self.w_video), ("frames", self.alpha)) if w)


def check_edit_args(prompts: Sequence[str], s_values: Sequence[float]) -> None:
    """One-sentence errors for an empty prompt or an `s` outside [0, 1]."""
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("The prompt is empty; describe the edited video, e.g. --config.prompt='a blue square "
                         "moving left on a gray background'.")
    bad = [s for s in s_values if not 0.0 <= s <= 1.0]
    if bad:
        raise ValueError(f"Noise strength s={bad[0]} is outside [0, 1]; 0 keeps the input, 1 ignores it.")


def check_finetune(settings: FinetuneSettings, stages: Sequence[cascade.Stage]) -> tuple[cascade.Stage, ...]:
    """The stages (of a cascade's `stages`) to finetune, none when steps is 0, after one-sentence errors
    for unusable settings."""
    names = [s.name for s in stages]
    unknown = [n for n in settings.stages if n not in names]
    if unknown:
        raise ValueError(f"Cannot finetune unknown stages {unknown}; the cascade has {names}.")
    if settings.steps and not settings.paths:
        raise ValueError("Both w_video and alpha are 0, so finetuning has no objective; set one of them above 0.")
    if not isinstance(settings.steps, int) or settings.steps < 0:
        raise ValueError(f"Finetuning steps is {settings.steps!r}; give a whole number, 0 or more.")
    weights = dict(lr=settings.lr, w_video=settings.w_video, alpha=settings.alpha)
    bad = [f"{k}={v!r}" for k, v in weights.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"Finetuning {bad[0]} is not a finite number ≥ 0; give one such as the config's default.")
    if settings.steps and settings.lr == 0:
        raise ValueError("The finetuning lr is 0, so finetuning would change nothing; set lr above 0 or steps=0.")
    if not settings.prompt.strip():
        raise ValueError("The finetuning prompt is empty; use a rare token such as 'sks'.")
    chosen = settings.stages or tuple(s.name for s in stages if s.finetune)
    return tuple(s for s in stages if s.name in chosen) if settings.steps else ()


# ------------------------------------------------------------------------------------------------
# Finetuning.
# ------------------------------------------------------------------------------------------------


@functools.cache
def _finetune_step(graphdef: nnx.GraphDef, paths: tuple[str, ...], schedule, cond_aug_max: float,
                   state_layout: tuple[Any, tuple[Any, ...]], stacked: bool = False):
    """The jitted finetuning step; lr and the loss weights are traced, so every trial of a sweep
    with the same stage and objective paths shares one program. Its weights and optimizer state
    leave it laid out as they came in (`state_layout`: treedef and shardings), so the second step
    does not compile again. `stacked`: weights, optimizer state, key, loss weights and lr carry a
    leading trial axis (one finetune each); the frozen state and the batch are shared."""
    out_shardings = (*jax.tree.unflatten(*state_layout), None, None)
    step = objective.make_train_step(graphdef, objective.make_optimizer(), paths=paths, schedule=schedule,
                                     cond_aug_max=cond_aug_max)
    if stacked:  # the frozen state and the batch are shared
        step = over_trials(step, state_layout[1][0].mesh, in_axes=(0, 0, None, None, 0, 0, 0))
    return jax.jit(step, donate_argnums=(0, 1), out_shardings=out_shardings)


def _stage_batch(stage: cascade.Stage, clip: jax.Array, text: np.ndarray, mask: np.ndarray) -> dict[str, jax.Array]:
    """The one-example batch a stage is finetuned on: the clip at the stage's size, its prompt and condition."""
    target, cond = cascade.training_pair(clip[None], stage)
    batch = dict(video=target, text=jnp.asarray(text), text_mask=jnp.asarray(mask))
    if cond is not None:
        batch["cond"] = cond
    return batch


def _stage_key(settings: FinetuneSettings, stage: cascade.Stage) -> jax.Array:
    """The key a stage's finetune draws its step keys from (step i: `fold_in(key, i)`)."""
    return jax.random.fold_in(jax.random.key(settings.seed), len(stage.name))


def finetune_stage(unet: nnx.Module, stage: cascade.Stage, clip: jax.Array, text: np.ndarray, mask: np.ndarray,
                   settings: FinetuneSettings, schedule, *, progress: bool = True,
                   keep_at: Sequence[int] = ()) -> tuple[nnx.Module, list[float], dict[int, nnx.Module]]:
    """A finetuned copy of one stage's U-Net (the given one is left as it is), its losses per step,
    and copies after each step count in `keep_at` (one run serves several step counts)."""
    graphdef, params, rest = nnx.split(unet, nnx.Param, ...)
    params = jax.tree.map(jnp.copy, params)  # the step donates its weights; the pretrained ones stay
    # Optimizer scalars would land on one device; replicate them over the weights' mesh.
    opt_state = on_mesh(objective.make_optimizer().init(params), jax.tree.leaves(params)[0].sharding.mesh)
    shardings = jax.tree.map(lambda x: x.sharding, (params, opt_state))
    step = _finetune_step(graphdef, settings.paths, schedule, stage.train_cond_aug,
                          (jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings))))
    batch = _stage_batch(stage, clip, text, mask)
    weights = jnp.asarray([settings.w_video, settings.alpha], jnp.float32)
    key = _stage_key(settings, stage)
    losses, kept = [], {}
    bar = tqdm.tqdm(range(settings.steps), desc=f"finetune {stage.name}", disable=not progress, unit="step")
    for i in bar:
        params, opt_state, loss, _ = step(params, opt_state, rest, batch, jax.random.fold_in(key, i), weights,
                                          jnp.float32(settings.lr))
        losses.append(float(loss))
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(f"Finetuning {stage.name} reached a loss of {losses[-1]} at step {i + 1}; "
                                     "lower the learning rate.")
        if i + 1 in keep_at:
            kept[i + 1] = nnx.merge(graphdef, jax.tree.map(jnp.copy, params), rest)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return nnx.merge(graphdef, params, rest), losses, kept


def finetune_key(clip: np.ndarray, settings: FinetuneSettings, cascade_: Cascade) -> str:
    """What identifies a finetune: the input's pixels, the settings and the pretrained weights."""
    digest = hashlib.sha256(np.ascontiguousarray(clip, np.float32).tobytes())
    digest.update(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    for unet in cascade_.unets:
        digest.update(weights_fingerprint(nnx.state(unet, nnx.Param)).encode())
    return digest.hexdigest()[:16]


def _save_params(path: epath.Path, unet: nnx.Module) -> None:
    """Write a U-Net's weights from the lead process; every process takes part in gathering them."""
    flat = to_host({"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(unet, nnx.Param))})
    if is_lead():
        with workdir_lib.atomic_path(path) as tmp:
            np.savez(tmp, **flat)


def _load_params(path: epath.Path, unet: nnx.Module) -> nnx.Module:
    """A copy of `unet` with the weights stored in `path`, laid out as its own; every process reads them."""
    graphdef, params, rest = nnx.split(unet, nnx.Param, ...)
    params = jax.tree.map(lambda x: x, params)  # new variables, so the given U-Net keeps its weights
    with path.open("rb") as file, np.load(file) as data:
        for p, variable in nnx.to_flat_state(params):
            variable.set_value(from_host(data["/".join(map(str, p))], variable.get_value().sharding))
    return nnx.merge(graphdef, params, rest)


def finetune(cascade_: Cascade, clip: np.ndarray, settings: FinetuneSettings,
             workdir: str | os.PathLike | None = None, *, progress: bool = True,
             also_at: Sequence[int] = ()) -> tuple[Cascade, dict[str, Any]]:
    """The cascade with its chosen stages finetuned on `clip` (T, H, W, 3); reused from `workdir` if stored there.

    Returns it and a record: the key, whether it was reused, the losses and seconds per stage.
    With a workdir, `also_at` (step counts below `settings.steps`) stores the finetunes those
    shorter runs would give, from the same run: each is exactly that run, since the steps are
    keyed by their index and the learning rate is constant.
    """
    if any(not 0 < k < settings.steps for k in also_at):
        raise ValueError(f"also_at {tuple(also_at)} must lie strictly between 0 and steps ({settings.steps}).")
    stages = check_finetune(settings, cascade_.stages)
    key = finetune_key(clip, settings, cascade_)
    record: dict[str, Any] = dict(key=key, settings=dataclasses.asdict(settings), reused=False, stages={})
    if not stages:
        return cascade_, record
    folder = workdir_lib.as_path(workdir) / "finetunes" / key if workdir else None
    shorter = {k: dataclasses.replace(settings, steps=k) for k in also_at}
    reused = None
    if folder is not None and all(_stored(folder.parent / finetune_key(clip, short, cascade_))
                                  for short in shorter.values()):
        reused = _reuse(cascade_, stages, folder)
    # Every process must train, or none: a finetune is reused only when all of them could read it.
    if agree(reused is not None):
        log.info("Reusing the finetune stored in %s.", folder)
        return reused

    text, mask = cascade_.text([settings.prompt])
    unets = list(cascade_.unets)
    shorter = {k: (short, list(cascade_.unets), {}) for k, short in shorter.items()}
    for i, stage in enumerate(cascade_.stages):
        if stage not in stages:
            continue
        start = time.perf_counter()
        unets[i], losses, kept = finetune_stage(unets[i], stage, jnp.asarray(clip), text, mask, settings,
                                                cascade_.schedule, progress=progress, keep_at=tuple(also_at))
        seconds = time.perf_counter() - start
        record["stages"][stage.name] = _stage_record(losses, seconds)
        for k, (_, short_unets, short_stages) in shorter.items():
            short_unets[i] = kept[k]
            short_stages[stage.name] = _stage_record(losses[:k], seconds * k / settings.steps)
    if folder is not None:
        _store(folder, cascade_.stages, stages, unets, record)
        for k, (short, short_unets, short_stages) in shorter.items():
            short_key = finetune_key(clip, short, cascade_)
            _store(folder.parent / short_key, cascade_.stages, stages, short_unets,
                   dict(key=short_key, settings=dataclasses.asdict(short), reused=False, stages=short_stages,
                        kept_from=key))
    return cascade_.with_unets(unets), record


def _stored(folder: epath.Path) -> bool:
    """Whether a complete, readable finetune record is stored in `folder` (unreadable ones are rebuilt)."""
    return workdir_lib.read_json_or_none(folder / "finetune.json") is not None


def _reuse(cascade_: Cascade, stages: Sequence[cascade.Stage],
           folder: epath.Path) -> tuple[Cascade, dict[str, Any]] | None:
    """The cascade with the finetune stored in `folder`, or None when it is missing or damaged."""
    record = workdir_lib.read_json_or_none(folder / "finetune.json")
    if record is None:
        return None
    unets = list(cascade_.unets)
    try:
        for i, stage in enumerate(cascade_.stages):
            if stage in stages:
                unets[i] = _load_params(folder / f"{stage.name}.npz", unets[i])
    except Exception as error:  # a damaged or foreign weights file: finetune again rather than fail forever
        log.warning("Ignoring the damaged finetune in %s (%s: %s); it will be rebuilt.", folder,
                    type(error).__name__, error)
        return None
    return cascade_.with_unets(unets), {**record, "reused": True}


def _stage_record(losses: list[float], seconds: float) -> dict[str, float]:
    return dict(first_loss=losses[0], last_loss=losses[-1], mean_loss_last_10=float(np.mean(losses[-10:])),
                seconds=round(seconds, 2))


def _store(folder: epath.Path, all_stages, tuned_stages, unets, record: dict[str, Any]) -> None:
    """Write a finetune's weights, then its record, which marks it complete; the lead process writes,
    and every process returns once it is complete."""
    for stage, unet in zip(all_stages, unets, strict=True):
        if stage in tuned_stages:
            _save_params(folder / f"{stage.name}.npz", unet)
    if is_lead():
        workdir_lib.write_json_atomic(folder / "finetune.json", record)
    sync(f"finetune stored in {folder}")


# ------------------------------------------------------------------------------------------------
# Several finetunes in one program: a stacked `trial` axis.
# ------------------------------------------------------------------------------------------------


def stack_key(settings: FinetuneSettings, stages: Sequence[cascade.Stage]) -> tuple[Any, ...]:
    """What finetunes must share to train in one stacked program: the prompt, the objective paths
    (which of w_video and α are 0) and the finetuned stages (of a cascade's `stages`)."""
    return settings.prompt, settings.paths, tuple(s.name for s in check_finetune(settings, stages))


def finetune_stage_trials(unet: nnx.Module, stage: cascade.Stage, clip: jax.Array, text: np.ndarray,
                          mask: np.ndarray, trials: Sequence[FinetuneSettings], schedule, mesh: Mesh,
                          keep_at: dict[int, Sequence[int]], *,
                          progress: bool = True) -> tuple[dict[tuple[int, int], nnx.Module], np.ndarray]:
    """Finetune one stage's U-Net once per trial, all in one program: copies of its weights stacked on
    a leading axis laid out over `mesh`'s `trial` axis, lr, loss weights and seed as data.

    Trials must share `stack_key`; every trial runs to the longest count in `keep_at` (step count →
    trial indices to keep then; one kept at none only fills the trial axis). Returns {(trial, steps): a
    finetuned copy on the U-Net's own layout} and the losses (trials, steps); trial i is `finetune_stage`
    with `trials[i]` at those steps, up to the order of float sums.
    """
    if len(trials) % mesh.shape[TRIAL_AXIS]:
        raise ValueError(f"{len(trials)} trials do not divide over the mesh's {mesh.shape[TRIAL_AXIS]} trial groups; "
                         "build the mesh with make_trial_mesh.")
    steps = max(keep_at)
    graphdef, params, rest = nnx.split(unet, nnx.Param, ...)
    own_layout = jax.tree.map(lambda x: x.sharding, params)
    stacked = stack_trials([params] * len(trials), mesh)
    init = jax.vmap(objective.make_optimizer().init)
    opt_state = jax.jit(init, out_shardings=trial_shardings(jax.eval_shape(init, stacked), mesh))(stacked)
    layout = jax.tree.map(lambda x: x.sharding, (stacked, opt_state))
    step = _finetune_step(graphdef, trials[0].paths, schedule, stage.train_cond_aug,
                          (jax.tree.structure(layout), tuple(jax.tree.leaves(layout))), stacked=True)
    # Host data every process holds alike goes in with `from_host`: each process places its own shards.
    batch = jax.tree.map(lambda x: from_host(np.asarray(x), NamedSharding(mesh, P())),
                         _stage_batch(stage, clip, text, mask))
    shared = on_mesh(rest, mesh)
    per_trial = lambda x: from_host(x, trial_shardings(x, mesh))  # noqa: E731
    keys = _step_keys(trials, stage, steps)
    weights = per_trial(np.asarray([[t.w_video, t.alpha] for t in trials], np.float32))
    lr = per_trial(np.asarray([t.lr for t in trials], np.float32))
    last_needed = {i: max((k for k, kept in keep_at.items() if i in kept), default=0) for i in range(len(trials))}
    losses, kept = [], {}
    bar = tqdm.tqdm(range(steps), desc=f"finetune {stage.name} x{len(trials)}", disable=not progress, unit="step")
    for i in bar:
        step_keys = jax.random.wrap_key_data(per_trial(keys[:, i]))
        stacked, opt_state, loss, _ = step(stacked, opt_state, shared, batch, step_keys, weights, lr)
        losses.append(to_host(loss))
        for t, value in enumerate(losses[-1]):
            if i < last_needed[t] and not np.isfinite(value):  # later steps of a shorter trial are discarded
                raise FloatingPointError(f"Finetuning {stage.name} with lr={trials[t].lr:g} reached a loss of {value} "
                                         f"at step {i + 1}; lower the learning rate.")
        if i + 1 in keep_at:
            host = to_host(stacked)
            for t in keep_at[i + 1]:
                copy = jax.tree.map(lambda x, s: from_host(x[t], s), host, own_layout)
                kept[t, i + 1] = nnx.merge(graphdef, copy, rest)
        bar.set_postfix(loss=f"{float(np.mean(losses[-1])):.4f}")
    return kept, np.stack(losses, axis=1)


def _step_keys(trials: Sequence[FinetuneSettings], stage: cascade.Stage, steps: int) -> np.ndarray:
    """The data of the key each trial's each step draws, as in `finetune_stage` (trials, steps, ...), on the
    host: a typed key array on one device cannot be placed onto other processes' devices."""
    fold_in = jax.vmap(jax.vmap(jax.random.fold_in, in_axes=(None, 0)), in_axes=(0, None))
    keys = jnp.stack([_stage_key(t, stage) for t in trials])
    return np.asarray(jax.random.key_data(fold_in(keys, jnp.arange(steps))))


def finetune_trials(cascade_: Cascade, clip: np.ndarray, settings_list: Sequence[FinetuneSettings],
                    workdir: str | os.PathLike, *, mesh: Mesh | None = None,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Finetune several settings of one input together and store each where `finetune` finds it; returns
    their records, in order.

    Settings that differ only in `steps` are one trial, stored at each count. The trials of a stage
    train in one program (`finetune_stage_trials`), all to the longest count; they must share
    `stack_key`. `mesh` is a `make_trial_mesh` mesh; by default the trial axis takes the devices of
    the weights' data axis (a one-example finetune has no use for them). Settings already stored are
    not trained again.
    """
    stages = [check_finetune(s, cascade_.stages) for s in settings_list]
    keys = [finetune_key(clip, s, cascade_) for s in settings_list]
    store = workdir_lib.as_path(workdir) / "finetunes"
    # Every process must train the same trials: one is skipped only when all of them can read it.
    todo = {k: s for k, s, tuned in zip(keys, settings_list, stages, strict=True)
            if tuned and not agree(_stored(store / k))}
    if len({stack_key(s, cascade_.stages) for s in todo.values()}) > 1:
        raise ValueError("Finetunes trained together must share the prompt, the finetuned stages and which of "
                         "w_video and alpha are 0; group them by `stack_key`.")
    if todo:
        _train_trials(cascade_, clip, todo, store, mesh, progress)
    return [workdir_lib.read_json_or_none(store / k / "finetune.json") | dict(reused=k not in todo) if tuned
            else dict(key=k, settings=dataclasses.asdict(s), reused=False, stages={})
            for k, s, tuned in zip(keys, settings_list, stages, strict=True)]


def _train_trials(cascade_: Cascade, clip: np.ndarray, todo: dict[str, FinetuneSettings], store: epath.Path,
                  mesh: Mesh | None, progress: bool) -> None:
    """Train the settings of `todo` (finetune key → settings, one `stack_key`) together and store each."""
    trials = list(dict.fromkeys(dataclasses.replace(s, steps=0) for s in todo.values()))
    row = {k: trials.index(dataclasses.replace(s, steps=0)) for k, s in todo.items()}
    keep_at: dict[int, list[int]] = collections.defaultdict(list)
    for k, s in todo.items():
        keep_at[s.steps].append(row[k])
    longest = max(keep_at)
    first = next(iter(todo.values()))
    stages = check_finetune(first, cascade_.stages)
    if mesh is None:
        own = jax.tree.leaves(nnx.state(cascade_.unets[cascade_.stages.index(stages[0])], nnx.Param))[0].sharding.mesh
        mesh = make_trial_mesh(len(trials), (-1, own.shape["fsdp"], own.shape["tensor"]), own.devices.flat)
    text, mask = cascade_.text([first.prompt])
    unets = {k: list(cascade_.unets) for k in todo}
    records = {k: dict(key=k, settings=dataclasses.asdict(s), reused=False, stages={}, trials_in_program=len(trials))
               for k, s in todo.items()}
    # A given mesh may be made for more trials than are left to train (the others stored before): the last
    # one is repeated until they divide over its trial groups, and the repeats are dropped.
    trials += [trials[-1]] * (-len(trials) % mesh.shape[TRIAL_AXIS])
    for i, stage in enumerate(cascade_.stages):
        if stage not in stages:
            continue
        start = time.perf_counter()
        kept, losses = finetune_stage_trials(cascade_.unets[i], stage, jnp.asarray(clip), text, mask, trials,
                                             cascade_.schedule, mesh, keep_at, progress=progress)
        seconds = time.perf_counter() - start  # of the whole program: every trial's share of it
        for k, s in todo.items():
            unets[k][i] = kept[row[k], s.steps]
            records[k]["stages"][stage.name] = _stage_record(losses[row[k], :s.steps].tolist(),
                                                             seconds * s.steps / longest)
    for k in todo:
        _store(store / k, cascade_.stages, stages, unets[k], records[k])


# ------------------------------------------------------------------------------------------------
# Editing.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EditRequest:
    """One edit of a batch."""

    prompt: str
    seed: int = 0
    s: float = 0.8


def grid(prompts: Sequence[str], seeds: Sequence[int], s_values: Sequence[float]) -> list[EditRequest]:
    """Every (prompt, seed, s) combination, prompts outermost."""
    return [EditRequest(p, seed, s) for p in prompts for seed in seeds for s in s_values]


def edit(cascade_: Cascade, clip: np.ndarray | None, requests: Sequence[EditRequest], *,
         guidance: float | Sequence[float] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Edit `clip` (T, H, W, 3) in [-1, 1] once per request, in one batch → ((N, T', H', W', 3), seconds per stage).

    `clip=None` samples from pure noise (every `s` must then be 1). `guidance` overrides the base
    stage's weight, for all requests or one weight per request (traced: any weights share a program).
    """
    return _edit(cascade_, cascade_.unets, clip, requests, guidance)


def edit_trials(cascades: Sequence[Cascade], clip: np.ndarray | None, requests: Sequence[EditRequest], *,
                mesh: Mesh, guidance: float | Sequence[float] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """`edit` with K finetunes of one cascade at once, one program per stage: `requests` are K row groups
    of one size, in order, group k edited by `cascades[k]`.

    Each stage's K U-Nets are stacked on `mesh`'s trial axis (a `make_trial_mesh` mesh); a U-Net that
    several cascades share (a stage none of them finetuned) is read once. Row i equals its `edit` with
    its own cascade, up to the order of float sums.
    """
    if not cascades or len(requests) % len(cascades):
        raise ValueError(f"{len(requests)} requests do not split into {len(cascades)} row groups of one size.")
    unets = []
    for stage_unets in zip(*(c.unets for c in cascades), strict=True):
        states = {id(u): nnx.state(u) for u in stage_unets}
        unets.append(nnx.merge(nnx.graphdef(stage_unets[0]), stack_trials([states[id(u)] for u in stage_unets],
                                                                           mesh)))
    return _edit(cascades[0], unets, clip, requests, guidance, trials=mesh)


def _edit(cascade_: Cascade, unets: Sequence[nnx.Module], clip: np.ndarray | None, requests: Sequence[EditRequest],
          guidance: float | Sequence[float] | None, trials: Mesh | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """`edit` with `unets`; given a `trials` mesh, they hold K stacked copies and the batch lies on that mesh."""
    if guidance is not None and not isinstance(guidance, (int, float)):
        guidance = np.asarray(guidance, np.float32)
        if guidance.shape != (len(requests),):
            raise ValueError(f"{guidance.shape[0] if guidance.ndim else 1} guidance weights were given for "
                             f"{len(requests)} requests.")
    check_edit_args([r.prompt for r in requests], [r.s for r in requests])
    if clip is None and any(r.s != 1.0 for r in requests):
        raise ValueError("Without an input video every edit starts from pure noise; use s=1.")
    text, mask = cascade_.text([r.prompt for r in requests])
    batch = dict(text=text, mask=mask, seed=np.asarray([r.seed for r in requests], np.int32),
                 s=np.asarray([r.s for r in requests], np.float32))
    if clip is not None:
        batch["x_start"] = np.repeat(np.asarray(cascade.degrade(jnp.asarray(clip)[None], cascade_.base)),
                                     len(requests), axis=0)
    if isinstance(guidance, np.ndarray):
        batch["guidance"] = guidance
    # Every process holds the whole batch; its rows go to every process's devices (split where they divide).
    batch = place_batch(batch, cascade_.text.mesh if trials is None else trials)
    seconds: dict[str, float] = {}
    videos = cascade.sample_cascade(unets, cascade_.stages, batch["text"], batch["mask"],
                                    jax.vmap(jax.random.key)(batch["seed"]), x_start=batch.get("x_start"),
                                    s=batch["s"], guidance=batch.get("guidance", guidance),
                                    schedule=cascade_.schedule, seconds=seconds, trials=trials)
    return to_host(jnp.clip(videos[-1], -1.0, 1.0)), seconds


# ------------------------------------------------------------------------------------------------
# Image animation: camera motion as perspective warps.
# ------------------------------------------------------------------------------------------------


def camera_homographies(motion: str, frames: int, amount: float, height: int, width: int) -> np.ndarray:
    """(T, 3, 3) maps from output to source pixel coordinates, centred on the frame centre.

    Camera motions: a pan to the right moves the content left by `amount · width` pixels over the
    clip (up/down use the height); zoom in enlarges by `1 + amount` about the centre (zoom out is
    its reverse); rotate turns by `amount · 90°`.
    """
    if motion not in CAMERA_MOTIONS:
        raise ValueError(f"Unknown camera motion {motion!r}; choose one of {CAMERA_MOTIONS}.")
    t = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    maps = np.tile(np.eye(3), (frames, 1, 1))
    pan = {"pan_right": (1, 0, width), "pan_left": (-1, 0, width), "pan_down": (0, 1, height),
           "pan_up": (0, -1, height)}
    if motion in pan:
        dx, dy, extent = pan[motion]
        maps[:, 0, 2] = dx * amount * extent * t
        maps[:, 1, 2] = dy * amount * extent * t
    elif motion in ("zoom_in", "zoom_out"):
        zoom = 1.0 + amount * (t if motion == "zoom_in" else 1.0 - t)
        maps[:, 0, 0] = maps[:, 1, 1] = 1.0 / zoom
    elif motion == "rotate":
        angle = -amount * np.pi / 2 * t  # the source turns the other way
        maps[:, 0, 0], maps[:, 0, 1] = np.cos(angle), -np.sin(angle)
        maps[:, 1, 0], maps[:, 1, 1] = np.sin(angle), np.cos(angle)
    return maps


@jax.jit
def warp(image: jax.Array, homography: jax.Array) -> jax.Array:
    """Perspective-warp an image (H, W, C): output pixel p shows the source at H·p, reflected outside the image."""
    height, width = image.shape[:2]
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) - (height - 1) / 2,
                          jnp.arange(width, dtype=jnp.float32) - (width - 1) / 2, indexing="ij")
    src = jnp.einsum("ij,jhw->ihw", homography, jnp.stack([xs, ys, jnp.ones_like(xs)]))
    x = src[0] / src[2] + (width - 1) / 2
    y = src[1] / src[2] + (height - 1) / 2
    channel = lambda c: jax.scipy.ndimage.map_coordinates(c, [y, x], order=1, mode="mirror")  # noqa: E731
    return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)


def animate(image: np.ndarray, motion: str, frames: int, amount: float = 0.25) -> np.ndarray:
    """One image (H, W, 3) → a coarse clip (T, H, W, 3) following a camera motion ('none' repeats it)."""
    maps = camera_homographies(motion, frames, amount, *image.shape[:2])
    return np.asarray(jax.vmap(warp, in_axes=(None, 0))(jnp.asarray(image, jnp.float32), jnp.asarray(maps, jnp.float32)))
