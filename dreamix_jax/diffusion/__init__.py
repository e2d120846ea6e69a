"""Diffusion process: schedule, v-parameterisation, losses and samplers."""

from dreamix_jax.diffusion.losses import (eps_from_v, noisy, per_example, v_from_x, v_loss, v_loss_terms,
                                          v_target, x_from_v)
from dreamix_jax.diffusion.sampling import (ddim_sample, example_keys, guided_denoiser, runs_one_pass, start_from,
                                             threshold)
from dreamix_jax.diffusion.schedule import Schedule, alpha_sigma, logsnr_cosine, resolution_shift

__all__ = [
    "Schedule", "alpha_sigma", "ddim_sample", "eps_from_v", "example_keys", "guided_denoiser", "logsnr_cosine", "noisy",
    "per_example", "resolution_shift", "runs_one_pass", "start_from", "threshold", "v_from_x", "v_loss", "v_loss_terms",
    "v_target", "x_from_v",
]
