r"""The main job on the embedded default: the shipped tiny cascade edits the bundled clip.

The bundled clip is "a red circle moving left on a gray background" (16 frames, 64 × 64). The
demo finetunes the cascade's base stage on it under that caption (mixed objective), then edits it
three ways in one batch: an appearance edit (colour), a motion edit (direction) and a background
edit. It prints the side-by-side comparison of each. Its config is `configs/dreamix.py:demo`.

  python -m dreamix_jax.demo --workdir /tmp/dreamix_demo
"""

import time

from absl import flags

from configs import dreamix as dreamix_configs
from dreamix_jax import cli, edit

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/dreamix_demo", "Where the finetune and the edits are written.")


def run(workdir: str) -> list[dict]:
    """The demo's edits, written under `workdir`."""
    return edit.run(dreamix_configs.get_config("demo"), workdir)


def main(argv: list[str]) -> None:
    del argv
    started = time.perf_counter()
    results = cli.run(lambda _, workdir: run(workdir), None, _WORKDIR.value, purpose="demo")
    print(f"Input: {edit.EXAMPLE_CLIP} ({edit.EXAMPLE_CAPTION})")
    for result in results:
        print(f"{result['request']['prompt']!r}:\n  {result['output']['video']}\n  {result['output']['comparison']}")
    print(f"Finished in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    cli.run_app(main)
