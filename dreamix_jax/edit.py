r"""The Dreamix command line: video editing, image animation and subject-driven generation.

  python -m dreamix_jax.edit --config configs/dreamix.py:video --workdir /tmp/dreamix \
      --config.input=clip.mp4 --config.prompt="a green circle moving right on a gray background"

The workdir and the input may be local or gs:// (`dreamix_jax.workdir`). On a multi-host slice
every host runs the same command with `--config.distributed=True` and a workdir they all see
(gs://): the cascade and the batch are laid out over every host's devices, and process 0 alone
writes the finetune store and the outputs.

Every input problem stops before any compute with one sentence. Each edit is written to
`<workdir>/edits/<name>/`: `video.mp4` (the output at the final stage's fps), `comparison.mp4`
(input beside output, captioned) and `result.json` (every setting, the finetune used, seconds per
stage). The finetune is stored in `<workdir>/finetunes/` and reused by later edits of the same
input with the same settings.
"""

import dataclasses
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import time
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from ml_collections import config_flags

from dreamix_jax import cascade, cli, dreamix, evaluate, pretrained
from dreamix_jax import workdir as workdir_lib
from dreamix_jax.data import synthetic, video_io
from dreamix_jax.sharding import initialize_distributed, is_lead, make_mesh

log = logging.getLogger(__name__)

EXAMPLE_CLIP = pathlib.Path(__file__).parent / "assets" / "example_clip.mp4"
# The bundled clip. Its start lets each demo edit's motion stay inside the frame, as every
# training track does: a large shape moving left starts at x in [0.67, 0.73], one moving up at
# y in [0.67, 0.73]. It starts right of centre because at the demo's s the model draws a vertical
# track where it would from pure noise, at x = 0.58 ± 0.09 whatever the input, so the motion edit
# keeps a start of 0.70 in about half the draws and one of 0.30 almost never (README, "How often the
# demo's edits succeed").
EXAMPLE = synthetic.Attributes("red", "circle", "left", "gray", "large", start=(0.70, 0.70),
                               texture=(0.8, 1.6, 0.0))
EXAMPLE_CAPTION = EXAMPLE.caption()
EXAMPLE_FPS = 8.0
# The demo's edits of the bundled clip: appearance, motion and background.
EXAMPLE_EDITS = (
    "a green circle moving left on a gray background",
    "a red circle moving up on a gray background",
    "a red circle moving left on a white background",
)


def write_example_clip(path: str | os.PathLike = EXAMPLE_CLIP) -> None:
    """Render the bundled clip (16 frames of 64 × 64) and write it to `path`."""
    video_io.write_video(path, synthetic.render(EXAMPLE, 16, 64, 64), EXAMPLE_FPS)


VARIANTS = ("video", "image", "subject")


# ------------------------------------------------------------------------------------------------
# Inputs, checked before any compute.
# ------------------------------------------------------------------------------------------------


def prompts_of(config: ml_collections.ConfigDict) -> list[str]:
    """The prompts in `config.prompt` (';'-separated), checked with `s` and the seeds."""
    if config.variant not in VARIANTS:
        raise ValueError(f"Unknown variant {config.variant!r}; choose one of {VARIANTS}.")
    prompts = [p.strip() for p in config.prompt.split(";")]
    dreamix.check_edit_args(prompts if any(prompts) else [], [config.s])
    if config.num_seeds < 1:
        raise ValueError(f"num_seeds is {config.num_seeds}; ask for at least one seed.")
    if config.variant == "subject" and config.s != 1.0:
        raise ValueError("Subject-driven generation samples from pure noise; use s=1 (or the video variant).")
    if config.variant == "image" and config.camera.motion not in dreamix.CAMERA_MOTIONS:
        raise ValueError(f"Unknown camera motion {config.camera.motion!r}; choose one of {dreamix.CAMERA_MOTIONS}.")
    return prompts


def read_input(config: ml_collections.ConfigDict) -> tuple[np.ndarray, float, str]:
    """The input as a clip (T, H, W, 3) in [-1, 1], its fps and its path, checked for the variant."""
    path = config.input
    if not path:
        if config.variant == "subject":
            raise video_io.InputError("Subject-driven generation needs images of the subject; give a folder as "
                                      "--config.input.")
        path = str(EXAMPLE_CLIP)
    clip, fps = video_io.read_frames(path)
    if config.variant == "video" and clip.shape[0] == 1:
        raise video_io.InputError(f"{path} holds a single image; animate it with configs/dreamix.py:image.")
    if config.variant == "image":
        if not config.input:
            clip = clip[:1]  # the example clip's first frame
        elif clip.shape[0] != 1 or pathlib.Path(path).suffix.lower() in video_io.VIDEO_SUFFIXES:
            raise video_io.InputError(f"{path} is not one image; give a PNG/JPEG file (for several images of one "
                                      "subject use configs/dreamix.py:subject).")
    return clip, fps, path


def fit_notices(clip: np.ndarray, stage: cascade.Stage) -> list[str]:
    """What fitting `clip` to `stage` will change, for the user to read."""
    notices = []
    t, h, w = clip.shape[:3]
    if h * stage.width != w * stage.height:
        notices.append(f"The input is {w}×{h}; it is centre-cropped to the model's {stage.width}:{stage.height} "
                       "aspect ratio.")
    if t not in (1, stage.frames):
        notices.append(f"The input has {t} frames; it is resampled in time to {stage.frames}.")
    return notices


def finetune_settings(config: ml_collections.ConfigDict) -> dreamix.FinetuneSettings:
    """The finetune section of the config as settings."""
    ft = config.finetune
    stages = tuple(s.strip() for s in ft.stages.split(",") if s.strip())
    return dreamix.FinetuneSettings(prompt=ft.prompt, w_video=ft.w_video, alpha=ft.alpha, lr=ft.lr, steps=ft.steps,
                                    stages=stages, seed=ft.seed)


def check_sampling(config: ml_collections.ConfigDict) -> None:
    """One-sentence errors for unusable sampling and camera settings."""
    if not isinstance(config.sampling_steps, int) or config.sampling_steps < 0:
        raise ValueError(f"sampling_steps is {config.sampling_steps!r}; give a whole number of DDIM steps "
                         "(0 keeps the cascade's own).")
    if not (math.isfinite(config.guidance) and config.guidance >= 0):
        raise ValueError(f"guidance is {config.guidance!r}; give a finite weight ≥ 0 (0 keeps the cascade's own).")
    if config.variant == "image" and not (math.isfinite(config.camera.amount) and config.camera.amount >= 0):
        raise ValueError(f"camera.amount is {config.camera.amount!r}; give a finite amount ≥ 0.")


def check_config(config: ml_collections.ConfigDict) -> tuple[list[str], dreamix.FinetuneSettings]:
    """Every setting checked before any model, data or compile work: the prompts and the finetuning
    settings to use (stage names against the weights file's own stage list)."""
    prompts = prompts_of(config)
    settings = finetune_settings(config)
    check_sampling(config)
    dreamix.check_finetune(settings, pretrained.read_stages(config.weights or pretrained.SHIPPED))
    return prompts, settings


def with_sampling_steps(model: pretrained.Cascade, steps: int) -> pretrained.Cascade:
    """The cascade with its base stage sampled in `steps` DDIM steps (0 keeps its own)."""
    if not steps:
        return model
    return dataclasses.replace(model, stages=(dataclasses.replace(model.base, steps=steps), *model.stages[1:]))


# ------------------------------------------------------------------------------------------------
# The run.
# ------------------------------------------------------------------------------------------------


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "edit"


def edit_folder(workdir: epath.Path, request: dreamix.EditRequest, finetune_key: str,
                sampling: dict[str, Any]) -> epath.Path:
    """Where an edit is written: named by its prompt, seed and s, and keyed by everything else that
    makes it (input, finetune, weights, sampling), so another edit never replaces it."""
    what = json.dumps(dict(request=dataclasses.asdict(request), finetune=finetune_key, sampling=sampling),
                      sort_keys=True)
    key = hashlib.sha256(what.encode()).hexdigest()[:8]
    return workdir / "edits" / f"{_slug(request.prompt)}-seed{request.seed}-s{request.s:g}-{key}"


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        model: pretrained.Cascade | None = None) -> list[dict[str, Any]]:
    """Finetune (or reuse a finetune) and edit as the config says; returns each edit's result record."""
    started = time.perf_counter()
    workdir = workdir_lib.as_path(workdir)
    prompts, settings = check_config(config)
    clip, fps, source = read_input(config)
    initialize_distributed(config)

    model = model or pretrained.load(config.weights or pretrained.SHIPPED, make_mesh(config.mesh.shape),
                                     cache_dir=workdir / "prompt_cache")
    model = with_sampling_steps(model, config.sampling_steps)
    to_tune = dreamix.check_finetune(settings, model.stages)
    final = model.final
    for notice in fit_notices(clip, final):
        log.warning(notice)
    if config.variant == "image":
        image = cascade.resize_space(cascade.center_crop(jnp.asarray(clip)[None], final.height, final.width),
                                     final.height, final.width)[0, 0]
        clip = dreamix.animate(np.asarray(image), config.camera.motion, final.frames, config.camera.amount)

    log.info("Finetuning %s.", ", ".join(s.name for s in to_tune) or "nothing")
    tuned, finetune_record = dreamix.finetune(model, clip, settings, workdir, progress=is_lead())
    requests = dreamix.grid(prompts, range(config.seed, config.seed + config.num_seeds), [config.s])
    log.info("Sampling %d edit(s) in one batch.", len(requests))
    videos, seconds = dreamix.edit(tuned, None if config.variant == "subject" else clip, requests,
                                   guidance=config.guidance or None)

    shown_input = np.asarray(cascade.degrade(jnp.asarray(clip)[None], final)[0])
    results = []
    sampling = dict(guidance=config.guidance, sampling_steps=config.sampling_steps)
    for request, video in zip(requests, videos, strict=True):
        folder = edit_folder(workdir, request, finetune_record["key"], sampling)
        result = dict(
            variant=config.variant, input=dict(path=source, frames=int(clip.shape[0]), fps=fps,
                                               height=int(clip.shape[1]), width=int(clip.shape[2])),
            request=dataclasses.asdict(request), output=dict(video=str(folder / "video.mp4"),
                                                             comparison=str(folder / "comparison.mp4"),
                                                             shape=list(video.shape), fps=final.fps),
            finetune=finetune_record, sampling_seconds_per_stage=seconds, batch=len(requests),
            weights=model.meta, config=config.to_dict())
        scores = evaluate.edit_scores(video, shown_input, request.prompt)
        if scores is not None:  # a prompt in the synthetic captions' grammar: the detector's reading
            result.update(scores=scores, detected=dict(
                input=dataclasses.asdict(evaluate.detect(shown_input)), output=dataclasses.asdict(evaluate.detect(video))))
        if is_lead():  # every process holds the same videos; one writes them
            video_io.write_video(folder / "video.mp4", video, final.fps)
            video_io.write_video(folder / "comparison.mp4",
                                 video_io.side_by_side([shown_input, video], ["input", request.prompt]), final.fps)
            workdir_lib.write_json_atomic(folder / "result.json", result)
        results.append(result)
    log.info("Done in %.1f s.", time.perf_counter() - started)
    return results


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    del argv
    config, workdir = cli.flag_values("configs/dreamix.py:video")
    results = cli.run(run, config, workdir, purpose="edit")
    if is_lead():
        for result in results:
            print(result["output"]["comparison"])


if __name__ == "__main__":
    # Flags are defined only when this module is the program, so others (the demo) can import it.
    config_flags.DEFINE_config_file("config", None, "configs/dreamix.py:<video|image|subject>.")
    flags.DEFINE_string("workdir", None, "Where finetunes and edits are written.")
    cli.run_app(main)
