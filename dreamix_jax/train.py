r"""The training loop: pretraining one cascade stage (and, as a config of it, Dreamix finetuning).

One linear script. A run trains the stage `config.stage` of `config.cascade` on `shapes_video`
clips with the mixed objective `w_video · L_video + α · L_frames` (both weights and the learning
rate are traced; a weight of 0 drops its program). SR stages learn from (low-resolution
condition, target) pairs cut from each clip, with conditioning augmentation. Checkpoints
(Orbax) hold the weights, optimizer state, data-iterator state and the resolved config; running
again on the same workdir resumes exactly where the last checkpoint stopped. The workdir (and the
data dir, `dreamix_jax.data.shapes_video`) may be local or gs://.

  python -m dreamix_jax.train --config configs/pretrain_shapes.py:base --workdir /tmp/shapes/base
  python -m dreamix_jax.train --config configs/pretrain_shapes.py:base --workdir gs://bucket/shapes/base
"""

import functools
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from etils import epath
from flax import nnx
from ml_collections import config_flags

from dreamix_jax import cascade, cli, objective, pretrained, probe
from dreamix_jax import workdir as workdir_lib
from dreamix_jax.data import loader as loader_lib
from dreamix_jax.data import shapes_video
from dreamix_jax.diffusion import Schedule
from dreamix_jax.models.t5 import T5Config, make_tokenizer
from dreamix_jax.models.text_to_video import TextToVideo
from dreamix_jax.models.unet3d import UNet3DConfig
from dreamix_jax.sharding import (
    initialize_distributed,
    make_mesh,
    on_mesh,
    place_batch,
    shard_batch,
    sharded_init,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Pieces the loop is made of.
# ------------------------------------------------------------------------------------------------


LR_SCHEDULES = ("cosine", "constant")


def lr_multiplier(step: jax.Array, warmup: int, total: int, kind: str) -> jax.Array:
    """Linear warm-up to 1, then constant or cosine decay to 0 at `total`."""
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))
    if kind == "constant":
        return warm
    if kind != "cosine":
        raise ValueError(f"Unknown lr_schedule {kind!r}; use one of {LR_SCHEDULES}.")
    progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    return warm * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def drop_text(mask: jax.Array, key: jax.Array, rate: float) -> jax.Array:
    """Replace a `rate` share of prompts by the null condition (all-False mask) for guidance."""
    keep = jax.random.uniform(key, mask.shape[:1]) >= rate
    return mask & keep[:, None]


def trainable(config: ml_collections.ConfigDict) -> nnx.filterlib.Filter:
    """Which weights the optimizer updates: the U-Net, plus the text encoder when it trains jointly."""
    if config.train_text_encoder:
        return nnx.Param
    return nnx.All(nnx.Param, nnx.PathContains("unet"))


class StopRequested:
    """Set by SIGTERM, Ctrl-C (SIGINT) or a TPU preemption notice: the loop checkpoints and exits
    cleanly. A second Ctrl-C interrupts at once."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: what Ctrl-C did before
            previous = self._previous[signal.SIGINT]
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        log.warning("Stop requested (%s): saving a checkpoint, then exiting.", signal.Signals(signum).name)
        self.requested = True

    def __call__(self, step: int) -> bool:
        if self.requested:
            return True
        if jax.process_count() > 1:  # the preemption notice reaches every host at the same step
            from jax.experimental import multihost_utils
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return False

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def check_config(config: ml_collections.ConfigDict) -> None:
    """One-sentence errors for unusable settings, before any data, model or compile work."""
    stages = {s.name: s for s in cascade.stages_from_config(config.cascade)}
    if config.stage not in stages:
        raise ValueError(f"Unknown stage {config.stage!r}; the cascade has {tuple(stages)}.")
    whole = dict(total_steps=1, batch_size=1, warmup_steps=0, checkpoint_every=1, keep_checkpoints=1, log_every=1,
                 probe_every=0, probe_clips=1)
    for name, least in whole.items():
        value = config.get(name, least)
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{name} is {value!r}; give a whole number ≥ {least}.")
    bounded = dict(lr=(0.0, None), w_video=(0.0, None), alpha=(0.0, None), weight_decay=(0.0, None),
                   grad_clip=(0.0, None), text_dropout=(0.0, 1.0), ema_decay=(0.0, 1.0), frames_share=(0.0, 1.0),
                   time_power=(0.0, None))
    for name, (low, high) in bounded.items():
        value = config.get(name, low)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= low
                and (high is None or value <= high)):
            limits = f"in [{low:g}, {high:g}]" if high is not None else f"≥ {low:g}"
            raise ValueError(f"{name} is {value!r}; give a finite number {limits}.")
    if config.get("time_power", 1.0) == 0 or config.get("frames_share", 1.0) == 0:
        raise ValueError("time_power and frames_share must be above 0.")
    if not config.w_video and not config.alpha:
        raise ValueError("Both w_video and alpha are 0: there is nothing to train.")
    crop = tuple(config.get("train_crop") or ())
    if crop and not stages[config.stage].is_sr:
        raise ValueError("train_crop applies to SR stages only; the base stage learns from whole clips.")
    if crop and (len(crop) != 2 or not all(isinstance(n, int) and n > 0 for n in crop)):
        raise ValueError(f"train_crop is {crop!r}; give (frames, pixels), two positive integers, or () for whole clips.")
    if config.lr_schedule not in LR_SCHEDULES:  # checked without JAX: distributed runs initialise it later
        raise ValueError(f"Unknown lr_schedule {config.lr_schedule!r}; use one of {LR_SCHEDULES}.")


# ------------------------------------------------------------------------------------------------
# The loop.
# ------------------------------------------------------------------------------------------------


def train(config: ml_collections.ConfigDict, workdir: str,
          on_step: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Train until `config.total_steps` (resuming from `workdir`); returns the last logged metrics."""
    # ---- Setup ----------------------------------------------------------------------------------
    workdir_path = workdir_lib.as_path(workdir)
    check_config(config)
    initialize_distributed(config)
    lead = jax.process_index() == 0
    mesh = make_mesh(config.mesh.shape)
    stage = {s.name: s for s in cascade.stages_from_config(config.cascade)}[config.stage]
    schedule = Schedule(**config.cascade.schedule)
    paths = tuple(p for p, w in (("video", config.w_video), ("frames", config.alpha)) if w)
    crop = tuple(config.get("train_crop") or ()) or None  # (frames, pixels) windows for SR stages
    # The frames path's share of each (per-device-divisible) batch; 1 gives it the whole batch.
    frames_examples = 0
    if config.get("frames_share", 1.0) < 1.0:
        frames_examples = max(1, int(round(config.frames_share * config.batch_size)))
    per_process = config.batch_size // jax.process_count()
    if per_process * jax.process_count() != config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} does not split over {jax.process_count()} processes.")

    # ---- Data -----------------------------------------------------------------------------------
    text_cfg = config.cascade.text
    tokenizer = make_tokenizer(text_cfg.tokenizer)
    data_dir = config.data.data_dir or str(workdir_path.parent / "tfds")
    source = shapes_video.source(data_dir, config.data.split, config.data.config)
    recolor = config.data.get("recolor", 0.0)  # share of clips whose shape is painted a random colour
    data = loader_lib.make_loader(source, batch_size=per_process, seed=config.seed, tokenizer=tokenizer,
                                  max_length=text_cfg.max_length, workers=config.data.get("workers", 0),
                                  augment=[shapes_video.Recolor(recolor)] if recolor else [])
    data_iter = loader_lib.Lookahead(iter(data))

    # ---- Model and optimizer --------------------------------------------------------------------
    t5_cfg = T5Config.from_config(text_cfg.model)
    model_graphdef, init_model = _model_init(stage.unet, t5_cfg, config.seed, mesh)
    with jax.set_mesh(mesh):
        model = nnx.merge(model_graphdef, init_model())
    if config.init_from:  # a warm start; a checkpoint in workdir (below) takes precedence
        load_stage(config.init_from, config.stage, model)
    if config.text_encoder_from:
        nnx.update(model.text_encoder, load_text_encoder(config.text_encoder_from, model))
    graphdef, params, rest = nnx.split(model, trainable(config), ...)
    # Weights kept frozen (a text encoder not trained here) are saved with every checkpoint, so a
    # workdir always holds every weight its U-Net was trained against.
    frozen = nnx.state(model, nnx.All(nnx.Param, nnx.Not(trainable(config))))
    optimizer_settings = (("weight_decay", config.weight_decay), ("clip", config.grad_clip))
    # Adam moments follow their weights' sharding; scalars (step counts) are replicated.
    opt_state = on_mesh(_optimizer_init(optimizer_settings)(params), mesh)
    ema = jax.tree.map(jnp.copy, params) if config.ema_decay else None
    make_step = functools.partial(
        _train_step, graphdef=graphdef, optimizer_settings=optimizer_settings, stage=stage, crop=crop, paths=paths, schedule=schedule,
        text_dropout=config.text_dropout, warmup=config.warmup_steps, total=config.total_steps,
        lr_schedule=config.lr_schedule, ema_decay=config.ema_decay, frames_examples=frames_examples,
        time_power=config.get("time_power", 1.0))
    out_shardings = (*jax.tree.map(lambda x: x.sharding, (params, opt_state, ema)), None)

    # ---- Conditioning probe: does the stage read each word of its caption? (probe.py) ------------
    probe_every = config.get("probe_every", 0)
    if probe_every:
        probe_video, probe_attrs = probe.probe_set(config.get("probe_clips", 16))
        # The clips split over the data axes like a batch: replicated, every device would probe them all.
        probe_inputs = (place_batch(probe_video, mesh), *on_mesh(jax.device_put(probe.probe_tokens(
            probe_attrs, tokenizer, text_cfg.max_length)), mesh))
        probe_errors = jax.jit(functools.partial(_probe_errors, graphdef=graphdef, stage=stage, schedule=schedule))

    # ---- Checkpoints ----------------------------------------------------------------------------
    # Orbax spreads the write of a replicated array over its replicas, one device slice each; below a
    # MiB a slice costs more to cut than it saves (a smoke run's save on 8 CPU devices: 5-12 s, 2.4 s
    # without), so small arrays are written whole, by one replica.
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=1 << 20), override=True)
    manager = ocp.CheckpointManager(
        workdir_path / "checkpoints", item_names=("state", "data", "config"),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                             enable_async_checkpointing=False))
    start = 0
    if manager.latest_step() is not None:
        start = manager.latest_step()
        target = dict(params=params, opt_state=opt_state, ema=ema, frozen=frozen)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
        restored = manager.restore(start, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(data_iter)))
        params, opt_state, ema = (restored["state"][k] for k in ("params", "opt_state", "ema"))
        log.info("Resumed from step %d of %s.", start, workdir)
    elif lead:
        workdir_lib.write_text_atomic(workdir_path / "config.json", config.to_json_best_effort(indent=2))

    def save(step: int) -> None:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(dict(params=params, opt_state=opt_state, ema=ema, frozen=frozen)),
            data=grain.checkpoint.CheckpointSave(data_iter), config=ocp.args.JsonSave(config.to_dict())), force=True)
        manager.wait_until_finished()

    # ---- Loop -----------------------------------------------------------------------------------
    weights = jnp.asarray([config.w_video, config.alpha], jnp.float32)
    base_key = jax.random.key(config.seed)
    stop = StopRequested()
    metrics: dict[str, Any] = {}
    progress = _progress(lead, start, config.total_steps)
    # Rows logged after the checkpoint resumed from are dropped: those steps log them again.
    log_rows = _rows_up_to(workdir_path / "metrics.jsonl", start) if lead else None
    writer = _tensorboard(workdir_path) if lead else None
    compiled, flops_per_step = None, 0.0
    tick, ticked = time.perf_counter(), start
    try:
        for step in range(start, config.total_steps):
            raw = next(data_iter)
            raw = shard_batch({k: raw[k] for k in ("video", "caption_ids", "caption_mask", "image_caption_ids",
                                                   "image_caption_mask")}, mesh)
            args = (params, opt_state, ema, rest, raw, jax.random.fold_in(base_key, step), weights,
                    jnp.float32(config.lr), jnp.int32(step))
            if compiled is None:
                compiled, flops_per_step = _compiled(make_step, out_shardings, args)
            params, opt_state, ema, out = compiled(*args)
            if step + 1 < config.total_steps:
                data_iter.prefetch()  # on the host while the device runs this step (`float` below waits)
            loss = float(out["loss"])
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"Loss is {loss} at step {step + 1}; stopping. The last good checkpoint is step "
                    f"{manager.latest_step()} in {workdir}.")
            done = step + 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}")
            if done % config.log_every == 0 or done == config.total_steps:
                elapsed, steps = time.perf_counter() - tick, done - ticked
                metrics = dict(step=done, loss=loss, grad_norm=float(out["grad_norm"]), lr=float(out["lr"]),
                               examples_per_s=steps * config.batch_size / elapsed,
                               flops_per_s=steps * flops_per_step / elapsed)
                tick, ticked = time.perf_counter(), done
                if lead:
                    _log_row(workdir_path / "metrics.jsonl", log_rows, writer, metrics)
            if probe_every and (done % probe_every == 0 or done == config.total_steps):
                errors = probe_errors(ema if ema is not None else params, rest, *probe_inputs, jax.random.key(0))
                probed = dict(step=done, **probe.summary(probe.gaps(np.asarray(errors))))
                log.info("Probe at step %d: %s", done, ", ".join(
                    f"{a} {probed[f'probe/{a}']:+.1%}" for a in probe.ATTRIBUTES))
                if lead:
                    _log_row(workdir_path / "metrics.jsonl", log_rows, writer, probed)
            if on_step is not None:
                on_step(done, metrics)
            stopping = stop(done)
            if stopping or done % config.checkpoint_every == 0 or done == config.total_steps:
                save(done)
            if stopping:
                log.warning("Stopped at step %d; checkpoint saved in %s.", done, workdir)
                break
    finally:
        stop.restore()
        progress.close()
        if lead:
            writer.close()
        manager.close()
    return metrics


# Another run in this process (a resumed run, a test's next run) reuses the traced and compiled
# initialisers below, not only the step (`_compiled`): traced afresh, each would be read back from the
# persistent compile cache, seconds on CPU.


@functools.cache
def _model_init(unet: UNet3DConfig, t5: T5Config, seed: int, mesh: jax.sharding.Mesh):
    """(graphdef, jitted init of the sharded state) of a stage's model, kept for the next run."""
    return sharded_init(lambda: TextToVideo(unet, t5, rngs=nnx.Rngs(seed)), mesh)


@functools.cache
def _optimizer_init(optimizer_settings: tuple) -> Callable:
    """The jitted `init` of the optimizer with these settings."""
    return jax.jit(objective.make_optimizer(**dict(optimizer_settings)).init)


def _train_step(params, opt_state, ema, rest, raw, key, weights, peak_lr, step, *, graphdef, optimizer_settings, stage,
                crop, paths, schedule, text_dropout, warmup, total, lr_schedule, ema_decay, frames_examples, time_power):
    """One optimisation step on a raw batch (uint8 clips at any size and tokenised captions)."""
    video, cond = cascade.training_pair(loader_lib.to_unit(raw["video"]), stage, crop, jax.random.fold_in(key, 1),
                                        blur=stage.train_cond_blur)
    drop_key, step_key = jax.random.split(key)
    batch = dict(video=video, text=raw["caption_ids"], text_mask=drop_text(raw["caption_mask"], drop_key, text_dropout),
                 frames_text=raw["image_caption_ids"],
                 frames_text_mask=drop_text(raw["image_caption_mask"], drop_key, text_dropout))
    if cond is not None:
        batch["cond"] = cond
    optimizer = objective.make_optimizer(**dict(optimizer_settings))
    step_fn = objective.make_train_step(graphdef, optimizer, paths=paths, schedule=schedule,
                                        cond_aug_max=stage.train_cond_aug, frames_examples=frames_examples,
                                        time_power=time_power)
    lr = peak_lr * lr_multiplier(step, warmup, total, lr_schedule)
    params, opt_state, loss, grad_norm = step_fn(params, opt_state, rest, batch, step_key, weights, lr)
    if ema is not None:
        # The decay warms up ((1 + step) / (10 + step), capped): a short run's average is not
        # dominated by the random initial weights it starts from.
        decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
    return params, opt_state, ema, dict(loss=loss, grad_norm=grad_norm, lr=lr)


def _probe_errors(params, rest, video, ids, masks, key, *, graphdef, stage, schedule):
    """`probe.x_errors` of the stage being trained, its captions read by its own text encoder."""
    model = nnx.merge(graphdef, params, rest)
    texts = jnp.stack([model.text_encoder(ids[v], masks[v]) for v in range(ids.shape[0])])
    return probe.x_errors(model.unet, texts, masks, video, key, stage=stage, schedule=schedule)


# Compiled steps by (static settings, argument signature): runs in one process with the same
# stage and shapes (a sweep's trials, a resumed run) reuse one executable.
_COMPILED: dict = {}


def _compiled(make_step: functools.partial, out_shardings, args) -> tuple[Any, float]:
    """The step compiled ahead of time for `args`, and its FLOPs (all devices)."""
    signature = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), args)
    statics = tuple(sorted(make_step.keywords.items()))
    key = (statics, jax.tree.structure(signature),
           tuple(jax.tree.leaves(signature)), jax.tree.structure(out_shardings), tuple(jax.tree.leaves(out_shardings)))
    if key not in _COMPILED:
        jitted = jax.jit(make_step, donate_argnums=(0, 1, 2), out_shardings=out_shardings)
        compiled = jitted.lower(*args).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        _COMPILED[key] = compiled, float(cost.get("flops", 0.0)) * jax.device_count()
    return _COMPILED[key]


def load_text_encoder(source: str, model: TextToVideo) -> nnx.State:
    """The text encoder of a cascade weights file (`.npz`) or of a training workdir's latest checkpoint
    (EMA when kept), sharded like `model`'s."""
    state = nnx.state(model.text_encoder, nnx.Param)
    pretrained.fill(state, pretrained.text_encoder_weights(source), "text_encoder")
    return state


def load_stage(source: str, stage: str, model: TextToVideo) -> None:
    """Set `model`'s U-Net to `stage`'s, and its text encoder where `source` holds one, from a cascade
    weights file or a training workdir: the weights a warm-started run begins from."""
    _, arrays = pretrained.stage_weights(source, stage)
    has_encoder = bool(pretrained.part(arrays, "text_encoder"))
    for part in ("unet", "text_encoder") if has_encoder else ("unet",):
        module = getattr(model, part)
        state = nnx.state(module, nnx.Param)
        new = pretrained.fill(state, arrays, part, keep_zeros=True)
        if new:
            log.info("Warm start: %d zero-initialised weights are new to this stage (%s).", len(new),
                        ", ".join(new))
        nnx.update(module, state)


def _rows_up_to(path: epath.Path, step: int) -> list[str]:
    """The metrics rows already in `path` up to `step` (the checkpoint a run resumes from, or 0)."""
    rows = path.read_text().splitlines(keepends=True) if path.is_file() else []
    return [r for r in rows if _row_step(r) <= step]


def _row_step(row: str) -> float:
    """A metrics row's step; a torn last line (a run killed mid-write) counts as past every step."""
    try:
        return json.loads(row)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _log_row(path: epath.Path, rows: list[str], writer, row: dict[str, Any]) -> None:
    """One row of metrics (with its `step`) added to `rows`, metrics.jsonl and TensorBoard."""
    rows.append(json.dumps(row) + "\n")
    # Rewritten whole, in one step: a GCS object cannot be appended to, and no row is ever torn.
    workdir_lib.write_text_atomic(path, "".join(rows))
    for name, value in row.items():
        if name != "step":
            writer.add_scalar(name, value, row["step"])


def _progress(lead: bool, start: int, total: int):
    """A progress bar on the lead process (loss, steps/s, ETA); silent elsewhere."""
    import tqdm

    return tqdm.tqdm(total=total, initial=start, disable=not lead, unit="step", dynamic_ncols=True)


def _tensorboard(workdir: epath.Path):
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(workdir / "tensorboard"))


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    del argv
    config, workdir = cli.flag_values("configs/pretrain_shapes.py:base")
    print(json.dumps(cli.run(train, config, workdir, purpose="train")))


if __name__ == "__main__":
    # Flags are defined only when this module is the program, so others can import it.
    config_flags.DEFINE_config_file("config", None, "A training config file, e.g. configs/pretrain_shapes.py:base.")
    flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the resolved config go.")
    cli.run_app(main)
