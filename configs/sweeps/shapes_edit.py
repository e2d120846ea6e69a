r"""A sweep of Dreamix on the bundled example clip ("a red circle moving left on a gray background").

The prompts stay in the synthetic dataset's caption grammar, so the attribute detector scores
every edit (alignment against the prompt, fidelity to the clip's size and start position).

  default  α ∈ {0, 1} (video-only, mixed) × {20, 40} finetuning steps, then s ∈ {0.5, 0.7, 0.9}
           × 2 seeds × 2 prompts: 4 finetunes from 2 runs, 48 edits in batches of 12.
  demo     around the demo's settings (configs/dreamix.py:demo, learned under the clip's caption):
           lr ∈ {2e-4, 5e-4, 1e-3} × {40, 200} finetuning steps of the base stage (where the layout
           is decided), then s ∈ {0.85, 0.9, 0.95} × the demo's three edits: 6 finetunes, 54 edits,
           one finetune at a time (on one CPU device stacked finetunes are slower than sequential
           ones). One seed per edit: benchmarks/demo_seeds.py measures a setting over many draws.
  smoke    the base stage finetuned for 1 and 2 steps (one run), 2 values of s, one prompt,
           4 base sampling steps: what the tests run.

  python -m dreamix_jax.sweep --config configs/sweeps/shapes_edit.py --workdir /tmp/sweep
  python -m dreamix_jax.sweep --config configs/sweeps/shapes_edit.py:demo --workdir /tmp/sweep_demo
  python -m dreamix_jax.sweep --config configs/sweeps/shapes_edit.py:smoke --workdir /tmp/sweep_smoke \
      --config.batch_size=4
"""

import ml_collections

from configs import common
from configs import dreamix as dreamix_configs
from dreamix_jax import edit


def get_config(arg: str | None = "default") -> ml_collections.ConfigDict:
    """The sweep; `arg` is "default", "demo" or "smoke"."""
    arg = common.parse_arg(arg, variant="default")
    if arg.variant not in ("default", "demo", "smoke"):
        raise ValueError(f"Unknown sweep variant {arg.variant!r}; choose 'default', 'demo' or 'smoke'.")
    config = ml_collections.ConfigDict()
    # Input "" is the bundled example clip; the demo's sweep starts from the demo's settings.
    config.edit = dreamix_configs.get_config("demo" if arg.variant == "demo" else "video")
    config.mode = "grid"  # "grid": every combination of each section's lists; "list": paired up
    # Edits of one finetune per sampling call (stacked runs: of each of the call's finetunes); one
    # compile per stage for the whole sweep.
    config.batch_size = 12
    # Finetuning runs trained at once in one program (weights stacked on the `trial` mesh axis), and
    # their edits sampled so, when they share the prompt, the stages and which of w_video and alpha are
    # 0; 1 trains and samples them one by one.
    config.trials_per_program = 4
    # True on every host of a multi-host slice (launch/sweep.sh passes --config.edit.distributed=true). The
    # command line leaves the workdir, which every host runs on, unlocked when a config's own `distributed`
    # is set: here it is the edit section's setting, by reference.
    config.distributed = config.edit.get_ref("distributed")
    if arg.variant == "smoke":
        config.edit.finetune.stages = "base"
        config.edit.sampling_steps = 4
        config.finetune = dict(steps=(1, 2))
        config.sample = dict(s=(0.5, 0.9), prompt=("a blue circle moving right on a gray background",))
        return config
    if arg.variant == "demo":  # the demo finetunes the base stage alone
        config.batch_size = 9
        config.trials_per_program = 1
        config.finetune = dict(lr=(2e-4, 5e-4, 1e-3), steps=(40, 200))
        config.sample = dict(s=(0.85, 0.9, 0.95), prompt=edit.EXAMPLE_EDITS)
        return config
    config.finetune = dict(alpha=(0.0, 1.0), steps=(20, 40))  # lr, w_video, seed also sweepable
    config.sample = dict(s=(0.5, 0.7, 0.9), seed=(0, 1),  # guidance also sweepable
                         prompt=("a blue circle moving right on a gray background",
                                 "a red circle moving left on a gray background"))
    return config
