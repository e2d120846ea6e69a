"""The denoising objective of one U-Net and its Optax step, in functional (split/merge) form.

`frames_independent` is static: the video path and the frames path are separate programs.
The training loop and the benchmarks build on these two functions.
"""

import functools
from collections.abc import Callable

import jax
import optax
from flax import nnx

from dreamix_jax.diffusion import Schedule, v_loss

Batch = dict[str, jax.Array]  # video (B,T,H,W,C), text (B,L,D), text_mask (B,L)


def unet_loss(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    batch: Batch,
    key: jax.Array,
    *,
    frames_independent: bool,
    schedule: Schedule = Schedule(),
) -> jax.Array:
    """Mean v-prediction loss of the U-Net on a batch; time, noise and dropout drawn from `key`."""
    # Fresh variable objects for this trace: `rest` (RNG state) arrives closed over by grad.
    model = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, rest))
    noise_key, dropout_key = jax.random.split(key)
    nnx.reseed(model, dropout=dropout_key)  # no RNG state to thread through the step

    def denoise(z, logsnr):
        return model(z, logsnr, batch["text"], batch["text_mask"], frames_independent=frames_independent)

    return v_loss(denoise, batch["video"], noise_key, schedule).mean()


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    frames_independent: bool,
    schedule: Schedule = Schedule(),
) -> Callable:
    """`step(params, opt_state, rest, batch, key) -> (params, opt_state, loss, grad_norm)`, not yet jitted."""
    loss_fn = functools.partial(unet_loss, graphdef, frames_independent=frames_independent, schedule=schedule)

    def step(params, opt_state, rest, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss, optax.tree.norm(grads)

    return step
