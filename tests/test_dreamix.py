"""Dreamix on a small cascade with the shipped one's stages and sizes (`conftest.small_cascade_file`):
camera warps, editing from s, batching, the command line's outputs, reuse of a stored finetune, a
workdir on gs://, and one-sentence errors for bad input."""

import dataclasses
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import gcs_names
from etils import epath

from configs import dreamix as dreamix_configs
from dreamix_jax import cascade, dreamix, edit, evaluate
from dreamix_jax.data import synthetic, video_io


@pytest.fixture(scope="module")
def clip():
    attrs = synthetic.Attributes("green", "square", "left", "black", "large", (0.6, 0.5), (1.0, 2.0, 0.3))
    return synthetic.render(attrs, 16, 64, 64)


# ---- camera motion ---------------------------------------------------------------------------


def _image(height=17, width=21):
    rng = np.random.default_rng(0)
    return rng.uniform(0.1, 1.0, (height, width, 3)).astype(np.float32)


def test_zoom_keeps_the_centre_fixed():
    image = _image()
    for motion in ("zoom_in", "zoom_out", "rotate"):
        video = dreamix.animate(image, motion, frames=5, amount=0.5)
        np.testing.assert_allclose(video[:, 8, 10], np.broadcast_to(image[8, 10], (5, 3)), atol=1e-5)
    zoomed = dreamix.animate(image, "zoom_in", frames=2, amount=1.0)[-1]  # ×2 about the centre
    np.testing.assert_allclose(zoomed[8 - 2, 10 + 4], image[8 - 1, 10 + 2], atol=1e-5)


def test_pan_shifts_content_by_the_expected_pixels():
    image = _image(height=16, width=20)
    video = dreamix.animate(image, "pan_right", frames=3, amount=0.2)  # 4 px over the clip, 2 per frame
    np.testing.assert_allclose(video[0], image, atol=1e-5)
    np.testing.assert_allclose(video[1][:, :-2], image[:, 2:], atol=1e-5)  # content moved left
    np.testing.assert_allclose(video[2][:, :-4], image[:, 4:], atol=1e-5)
    down = dreamix.animate(image, "pan_down", frames=2, amount=0.25)[-1]
    np.testing.assert_allclose(down[:-4], image[4:], atol=1e-5)


def test_reflection_padding_leaves_no_empty_border():
    image = _image()
    for motion in ("pan_left", "pan_up", "zoom_out", "rotate"):
        video = dreamix.animate(image, motion, frames=4, amount=0.5)
        assert video.min() >= 0.1 - 1e-5 and video.max() <= 1.0 + 1e-5, motion  # only image values, no fill
    image = _image(height=16, width=20)
    panned = dreamix.animate(image, "pan_left", frames=2, amount=0.1)[-1]  # 2 px beyond the left edge
    np.testing.assert_allclose(panned[:, :2], image[:, 2:0:-1], atol=1e-5)  # mirrored about the edge pixel


def test_unknown_camera_motion():
    with pytest.raises(ValueError, match="Unknown camera motion 'spin'"):
        dreamix.animate(_image(), "spin", frames=2)


# ---- editing ------------------------------------------------------------------------------------


def _base_only(model):
    return model.base_only()


def test_noise_strength_zero_returns_the_degraded_input(small, clip):
    base = small.base
    degraded = np.asarray(cascade.degrade(jnp.asarray(clip)[None], base))
    out, _ = dreamix.edit(_base_only(small), clip, [dreamix.EditRequest("a blue circle", seed=3, s=0.0)])
    np.testing.assert_allclose(out, np.clip(degraded, -1, 1), atol=2e-3)


def test_a_batch_of_edits_equals_the_edits_one_by_one(small, clip):
    model = _base_only(small)
    requests = [dreamix.EditRequest("a red circle moving up on a gray background", seed=1, s=0.5),
                dreamix.EditRequest("a red circle moving up on a gray background", seed=2, s=0.9)]
    batch, _ = dreamix.edit(model, clip, requests)
    single, _ = dreamix.edit(model, clip, requests[1:])
    np.testing.assert_allclose(batch[1], single[0], atol=1e-5)
    assert np.abs(batch[0] - batch[1]).mean() > 1e-2  # the two settings differ


# ---- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(small, clip, tmp_path_factory):
    """One edit through `edit.run` with a short finetune, then a second prompt on the same input."""
    workdir = tmp_path_factory.mktemp("dreamix")
    source = video_io.write_video(workdir / "input.mp4", clip, fps=8.0)
    config = dreamix_configs.get_config("video")
    config.input = str(source)
    config.prompt = "a green square moving right on a black background"
    config.finetune.steps = 2
    first = edit.run(config, workdir, model=small)
    config.prompt = "a red square moving left on a black background"
    second = edit.run(config, workdir, model=small)
    # The first prompt again with another guidance: a new edit, beside the first, not over it.
    config.prompt, config.guidance = "a green square moving right on a black background", 1.5
    third = edit.run(config, workdir, model=small)
    return workdir, first, second, third


def test_the_pipeline_writes_every_output(cli_run, small):
    workdir, first, *_ = cli_run
    (result,) = first
    video, fps = video_io.read_frames(result["output"]["video"])
    assert video.shape == (16, 64, 64, 3) and fps == small.final.fps == 8
    comparison, _ = video_io.read_frames(result["output"]["comparison"])
    assert comparison.shape == (16, 4 * 64 + 14, 2 * 4 * 64 + 4, 3)
    saved = json.loads(pathlib.Path(result["output"]["video"]).with_name("result.json").read_text())
    assert saved["request"]["prompt"] == "a green square moving right on a black background"
    assert set(saved["sampling_seconds_per_stage"]) == {s.name for s in small.stages}
    assert set(saved["finetune"]["stages"]) == {"base", "ssr1", "ssr2"}  # the stages the config marks
    assert saved["finetune"]["reused"] is False and saved["config"]["finetune"]["steps"] == 2
    assert evaluate.detect(video).background != "none"
    # The prompt follows the captions' grammar, so the detector's reading and the edit's scores are saved.
    assert saved["detected"]["input"]["color"] == "green" and saved["detected"]["input"]["direction"] == "left"
    assert set(saved["detected"]["output"]) >= {"color", "shape", "direction", "background", "size", "start"}
    assert 0.0 <= saved["scores"]["alignment"] <= 1.0 and 0.0 <= saved["scores"]["fidelity"] <= 1.0


def test_a_second_edit_reuses_the_stored_finetune(cli_run):
    workdir, first, second, _ = cli_run
    assert second[0]["finetune"]["reused"] is True
    assert second[0]["finetune"]["key"] == first[0]["finetune"]["key"]
    assert len(list((workdir / "finetunes").iterdir())) == 1


def test_an_edit_with_other_settings_does_not_replace_another(cli_run):
    workdir, first, _, third = cli_run
    folders = [pathlib.Path(r[0]["output"]["video"]).parent for r in (first, third)]
    assert folders[0] != folders[1] and len(list((workdir / "edits").iterdir())) == 3
    kept = json.loads((folders[0] / "result.json").read_text())
    assert kept["config"]["guidance"] == 0.0 and kept["request"] == first[0]["request"]


def test_a_damaged_finetune_is_rebuilt(cli_run, small, caplog):
    workdir, first, *_ = cli_run
    config = dreamix_configs.get_config("video")
    config.input, config.prompt = first[0]["input"]["path"], first[0]["request"]["prompt"]
    config.finetune.steps, config.finetune.stages = 2, "base"  # one stage shows the repair at a third of the cost
    (tuned,) = edit.run(config, workdir, model=small)
    record = workdir / "finetunes" / tuned["finetune"]["key"] / "finetune.json"
    record.write_text("")  # what a crash mid-write left before writes were atomic
    with caplog.at_level("WARNING"):
        (again,) = edit.run(config, workdir, model=small)
    assert again["finetune"]["reused"] is False and again["finetune"]["key"] == tuned["finetune"]["key"]
    assert "Ignoring unreadable" in caplog.text and json.loads(record.read_text())["key"] == again["finetune"]["key"]


def test_an_edit_on_gcs_stores_its_finetune_there_and_reuses_it(gcs_bucket, small, clip):
    """Input, finetune store and edit on gs://, on the cascade's base and tsr stages (the store is the
    same for any cascade): the programs of the one-stage finetune above and of those stages' sampling."""
    workdir = f"{gcs_bucket}/edit"
    two_stages = dataclasses.replace(small, stages=small.stages[:2], unets=small.unets[:2])
    config = dreamix_configs.get_config("video")
    config.input = str(video_io.write_video(f"{gcs_bucket}/inputs/edit.mp4", clip, fps=8.0))
    config.prompt = "a green square moving right on a black background"
    config.finetune.steps, config.finetune.stages = 2, "base"
    (result,) = edit.run(config, workdir, model=two_stages)
    key = result["finetune"]["key"]
    assert result["finetune"]["reused"] is False
    assert gcs_names(f"{workdir}/finetunes/{key}") == ["base.npz", "finetune.json"]
    folder = epath.Path(result["output"]["video"]).parent
    assert str(folder).startswith(f"{workdir}/edits/")
    assert gcs_names(folder) == ["comparison.mp4", "result.json", "video.mp4"]
    video, fps = video_io.read_frames(result["output"]["video"])
    assert video.shape == (16, 16, 16, 3) and fps == 8
    saved = json.loads((folder / "result.json").read_text())
    assert saved["input"]["path"] == config.input and saved["finetune"]["key"] == key
    # What the next edit of this input does first: its weights come back from the bucket.
    _, again = dreamix.finetune(two_stages, edit.read_input(config)[0], edit.finetune_settings(config), workdir,
                                progress=False)
    assert again["reused"] is True and again["key"] == key


@pytest.mark.parametrize("change, message", [
    (dict(input="/nonexistent/clip.mp4"), "does not exist"),
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="a red circle;"), "prompt is empty"),
    (dict(s=1.5), "outside \\[0, 1\\]"),
    (dict(s=-0.1), "outside \\[0, 1\\]"),
    (dict(variant="music"), "Unknown variant"),
    (dict(num_seeds=0), "at least one seed"),
])
def test_bad_input_stops_before_any_compute(tmp_path, change, message):
    config = dreamix_configs.get_config("video")
    config.prompt = "a red circle"
    config.update(change)
    with pytest.raises(ValueError, match=message):
        edit.run(config, tmp_path, model=object())  # a model is never touched


def test_a_workdir_url_other_than_gcs_is_refused():
    config = dreamix_configs.get_config("video")
    config.prompt = "a red circle"
    with pytest.raises(ValueError, match=r"^s3://bucket/edit is a s3:// URL; give a local path or a gs:// URL\.$"):
        edit.run(config, "s3://bucket/edit", model=object())


def test_input_kinds_that_do_not_fit_the_variant(tmp_path, clip):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "frame.png", video_io.to_uint8(clip[0]))
    (tmp_path / "empty").mkdir()
    cases = [("video", tmp_path / "frame.png", "single image"), ("image", edit.EXAMPLE_CLIP, "not one image"),
             ("subject", "", "needs images"), ("video", tmp_path / "empty", "holds no images")]
    for variant, path, message in cases:
        config = dreamix_configs.get_config(variant)
        config.input, config.prompt = str(path), "a sks"
        with pytest.raises(ValueError, match=message):
            edit.run(config, tmp_path, model=object())
    with pytest.raises(ValueError, match="Unknown Dreamix variant"):
        dreamix_configs.get_config("music")


def test_image_animation_and_subject_generation_run_from_the_command_line(small, clip, tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "frame.png", video_io.to_uint8(clip[0]))
    subject = tmp_path / "subject"
    subject.mkdir()
    for i in (0, 7, 15):
        iio.imwrite(subject / f"{i:02d}.png", video_io.to_uint8(clip[i]))
    for variant, source, prompt in [("image", tmp_path / "frame.png", "a green square on a black background"),
                                    ("subject", subject, "a sks moving up on a black background")]:
        config = dreamix_configs.get_config(variant)
        config.input, config.prompt = str(source), prompt
        config.finetune.steps, config.finetune.stages = 2, "base"  # frames only: one compiled step for both
        (result,) = edit.run(config, tmp_path / variant, model=small)
        assert result["variant"] == variant and result["config"]["finetune"]["w_video"] == 0.0
        assert set(result["finetune"]["stages"]) == {"base"}
        video, _ = video_io.read_frames(result["output"]["video"])
        assert video.shape == (16, 64, 64, 3)
    assert result["request"]["s"] == 1.0 and result["input"]["frames"] == 3
