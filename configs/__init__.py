"""Experiment configs: `configs/<name>.py` with `get_config(arg)`; pass as `--config configs/<name>.py:<arg>`."""
