"""A cascade stage as trained: the T5 encoder that reads the prompt, then the stage's U-Net.

Training calls it with token ids, so the encoder can be trained jointly (the shipped tiny
cascade has no pretrained T5) or kept frozen by leaving its weights out of the optimised set.
Sampling uses the two parts separately: prompts are encoded once, then the U-Net runs each step.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dreamix_jax.models.t5 import T5Config, T5Encoder
from dreamix_jax.models.unet3d import UNet3D, UNet3DConfig


class TextToVideo(nnx.Module):
    """Token ids → T5 embeddings → the U-Net's v-prediction."""

    def __init__(self, unet: UNet3DConfig, text: T5Config, *, rngs: nnx.Rngs):
        if unet.text_dim != text.d_model:
            raise ValueError(f"The U-Net reads {unet.text_dim}-wide text but the T5 encoder makes {text.d_model}; "
                             "set unet.text_dim to the encoder's d_model.")
        self.text_encoder = T5Encoder(text, rngs=rngs)
        self.unet = UNet3D(unet, rngs=rngs)

    def __call__(self, x: jax.Array, logsnr: jax.Array, ids: jax.Array, ids_mask: jax.Array, *,
                 cond: jax.Array | None = None, cond_logsnr: jax.Array | None = None,
                 frames_independent: bool = False) -> jax.Array:
        # An all-False mask is the null condition: zero embeddings, as `t5.null_text` gives.
        text = self.text_encoder(ids, ids_mask) * jnp.any(ids_mask, axis=-1)[:, None, None]
        return self.unet(x, logsnr, text, ids_mask, cond=cond, cond_logsnr=cond_logsnr,
                         frames_independent=frames_independent)
