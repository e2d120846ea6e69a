"""The denoising objective of one cascade stage and its Optax step, in functional (split/merge) form.

Dreamix's mixed objective is `L = w_video · L_video + α · L_frames`. `L_video` is the v-loss on
whole clips; `L_frames` is the same loss with `frames_independent=True` (identity temporal mask,
no temporal convolutions), so the clip is a set of unordered images. Which paths exist is static
(`paths`: a weight fixed at 0 skips its program); the weights themselves are traced, so a sweep
over α never recompiles. SR stages also read a low-resolution `cond` video, noised here by
training-time conditioning augmentation.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dreamix_jax.cascade import training_condition
from dreamix_jax.diffusion import Schedule, v_loss

# video (B,T,H,W,C), text (B,L,D) or ids (B,L), text_mask (B,L). Optional: cond (B,T,H,W,C) for SR
# stages, and frames_text / frames_text_mask, the prompt the frames path reads (images: no motion).
Batch = dict[str, jax.Array]
PATHS = ("video", "frames")


def unet_loss(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    batch: Batch,
    key: jax.Array,
    *,
    frames_independent: bool,
    schedule: Schedule = Schedule(),
    cond_aug_max: float = 0.0,
    time_power: float = 1.0,
) -> jax.Array:
    """Mean v-prediction loss of the U-Net on a batch; time, noise, augmentation and dropout drawn from `key`."""
    # Fresh variable objects for this trace: `rest` (RNG state) arrives closed over by grad.
    model = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, rest))
    noise_key, dropout_key, aug_key = jax.random.split(key, 3)
    nnx.reseed(model, dropout=dropout_key)  # no RNG state to thread through the step
    cond = cond_logsnr = None
    if "cond" in batch:
        cond, cond_logsnr = training_condition(batch["cond"], cond_aug_max, aug_key, schedule)

    def denoise(z, logsnr):
        return model(z, logsnr, batch["text"], batch["text_mask"], cond=cond, cond_logsnr=cond_logsnr,
                     frames_independent=frames_independent)

    return v_loss(denoise, batch["video"], noise_key, schedule, time_power).mean()


def dreamix_loss(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    batch: Batch,
    key: jax.Array,
    weights: jax.Array,
    *,
    paths: Sequence[str],
    schedule: Schedule = Schedule(),
    cond_aug_max: float = 0.0,
    frames_examples: int = 0,
    time_power: float = 1.0,
) -> jax.Array:
    """`w_video · L_video + α · L_frames` with `weights = (w_video, α)`; only the static `paths` run.

    The video path draws from `key` itself (so it equals `unet_loss` with that key), the frames
    path from `fold_in(key, 1)`. `frames_examples` > 0 gives the frames path only the batch's first
    examples: pretraining keeps the image skill at a fraction of the cost.
    """
    unknown = set(paths) - set(PATHS)
    if unknown or not paths:
        raise ValueError(f"paths must be a non-empty subset of {PATHS}, got {tuple(paths)}.")
    loss_fn = functools.partial(unet_loss, graphdef, params, rest, schedule=schedule, cond_aug_max=cond_aug_max,
                                time_power=time_power)
    loss = jnp.float32(0.0)
    if "video" in paths:
        loss += weights[0] * loss_fn(batch, key, frames_independent=False)
    if "frames" in paths:
        frames_batch = batch
        if "frames_text" in batch:
            frames_batch = {**batch, "text": batch["frames_text"], "text_mask": batch["frames_text_mask"]}
        if frames_examples:
            frames_batch = {name: value[:frames_examples] for name, value in frames_batch.items()}
        loss += weights[1] * loss_fn(frames_batch, jax.random.fold_in(key, 1), frames_independent=True)
    return loss


def make_optimizer(*, weight_decay: float = 0.0, clip: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999) -> optax.GradientTransformation:
    """AdamW (after global-norm clipping when `clip` > 0) whose learning rate is state, set per step."""
    adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b1=b1, b2=b2, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw


def _with_learning_rate(opt_state, learning_rate: jax.Array):
    """Set the learning rate of every injected-hyperparameter state in `opt_state`."""
    injected = optax.InjectStatefulHyperparamsState

    def set_lr(s):
        if isinstance(s, injected):
            return s._replace(hyperparams={**s.hyperparams, "learning_rate": jnp.asarray(learning_rate, jnp.float32)})
        return s

    return jax.tree.map(set_lr, opt_state, is_leaf=lambda s: isinstance(s, injected))


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    paths: Sequence[str] = ("video",),
    schedule: Schedule = Schedule(),
    cond_aug_max: float = 0.0,
    frames_examples: int = 0,
    time_power: float = 1.0,
) -> Callable:
    """`step(params, opt_state, rest, batch, key, weights=None, learning_rate=None)
    -> (params, opt_state, loss, grad_norm)`, not jitted.

    `weights` is (w_video, α), traced; None means (1, 1). `learning_rate` (traced) overrides the
    rate of an optimizer from `make_optimizer`, so a sweep over it never recompiles.
    """
    loss_fn = functools.partial(dreamix_loss, graphdef, paths=tuple(paths), schedule=schedule,
                                cond_aug_max=cond_aug_max, frames_examples=frames_examples, time_power=time_power)

    def step(params, opt_state, rest, batch, key, weights=None, learning_rate=None):
        weights = jnp.ones(2, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
        if learning_rate is not None:
            opt_state = _with_learning_rate(opt_state, learning_rate)
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, batch, key, weights)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss, optax.tree.norm(grads)

    return step
