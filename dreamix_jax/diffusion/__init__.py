"""Diffusion process: schedule, v-parameterisation, losses and samplers."""
