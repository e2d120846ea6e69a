"""Sweeps: trial lists and their errors, the scores, and one smoke sweep on two stages of a
small cascade that is interrupted, resumed and reported, with one sampling compile per stage."""

import dataclasses
import json

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs.sweeps import shapes_edit
from dreamix_jax import cascade, dreamix, edit, evaluate, sweep
from dreamix_jax.data import synthetic

# ---- trial lists ---------------------------------------------------------------------------------


def test_grid_and_list_modes():
    section = dict(s=(0.5, 0.9), seed=(0, 1))
    grid = sweep.combinations(section, sweep.SAMPLE_KEYS, "grid", "sample")
    assert grid == [dict(s=0.5, seed=0), dict(s=0.5, seed=1), dict(s=0.9, seed=0), dict(s=0.9, seed=1)]
    assert sweep.combinations(section, sweep.SAMPLE_KEYS, "list", "sample") == [dict(s=0.5, seed=0),
                                                                                dict(s=0.9, seed=1)]
    assert sweep.combinations(dict(s=0.7), sweep.SAMPLE_KEYS, "grid", "sample") == [dict(s=0.7)]


@pytest.mark.parametrize("section, mode, message", [
    (dict(strength=(0.5,)), "grid", r"Unknown sample settings \['strength'\]"),
    (dict(s=(0.5, 0.9), seed=(0,)), "list", "must have one length"),
    (dict(s=()), "grid", "'s' has no values"),
    (dict(s=(0.5,)), "random", "Unknown sweep mode 'random'"),
])
def test_bad_sections(section, mode, message):
    with pytest.raises(ValueError, match=message):
        sweep.combinations(section, sweep.SAMPLE_KEYS, mode, "sample")


def test_batches_are_padded_to_one_shape():
    assert list(sweep.batches([1, 2, 3, 4, 5], 2)) == [([1, 2], 2), ([3, 4], 2), ([5, 5], 1)]


def _smoke_config() -> ml_collections.ConfigDict:
    config = shapes_edit.get_config("smoke")
    config.edit.sampling_steps = 0  # keep the test cascade's 2 steps per stage
    return config


def test_trial_lists_are_checked_before_any_compute(small):
    config = _smoke_config()
    trials = sweep.trials_of(config, small.stages)
    assert [(t.finetune.steps, t.request.s) for t in trials] == [(1, 0.5), (1, 0.9), (2, 0.5), (2, 0.9)]
    assert len({t.id for t in trials}) == 4
    config.sample.s = (0.5, 0.5)
    with pytest.raises(ValueError, match="same trial twice"):
        sweep.trials_of(config, small.stages)
    config = _smoke_config()
    config.sample.s = (0.5, 1.5)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        sweep.trials_of(config, small.stages)
    config = _smoke_config()
    config.finetune.lr = (1e-4,)
    config.finetune.rate = (1e-4,)
    with pytest.raises(ValueError, match=r"Unknown finetune settings \['rate'\]"):
        sweep.trials_of(config, small.stages)



def test_demo_sweep_brackets_the_demo_defaults(small):
    """The `demo` sweep edits the demo's three prompts, and its grid holds the demo's own settings."""
    config = shapes_edit.get_config("demo")
    trials = sweep.trials_of(config, small.stages)
    assert len(trials) == 54 and len({t.finetune for t in trials}) == 6
    assert {t.request.prompt for t in trials} == set(edit.EXAMPLE_EDITS)
    assert {t.finetune.stages for t in trials} == {("base",)}
    assert config.edit.variant == "video" and config.edit.finetune.prompt == edit.EXAMPLE_CAPTION
    demo = edit.finetune_settings(config.edit)
    assert any(t.finetune.lr == demo.lr and t.finetune.steps == demo.steps and t.request.s == config.edit.s
               for t in trials)

# ---- scores ----------------------------------------------------------------------------------------


def test_caption_parsing():
    assert synthetic.parse_caption("A red circle moving left on a gray background.") == dict(
        color="red", shape="circle", direction="left", background="gray")
    assert synthetic.parse_caption("a blue square standing still on a black background")["direction"] == "still"
    for text in ("a red circle", "a red dragon moving left on a gray background",
                 "a red circle moving sideways on a gray background",
                 "the red circle moving left on a gray background"):
        assert synthetic.parse_caption(text) is None, text


def test_model_free_scores():
    rng = np.random.default_rng(0)
    clip = rng.uniform(-1, 1, (4, 16, 16, 3))
    assert evaluate.psnr(clip, clip) == float("inf")
    assert evaluate.ssim(clip, clip) == pytest.approx(1.0)
    noisy = np.clip(clip + rng.normal(0, 0.1, clip.shape), -1, 1)
    noisier = np.clip(clip + rng.normal(0, 0.4, clip.shape), -1, 1)
    assert evaluate.psnr(clip, noisy) > evaluate.psnr(clip, noisier) > 0
    assert 1 > evaluate.ssim(clip, noisy) > evaluate.ssim(clip, noisier)
    # PSNR is 10 log10(range² / MSE): a constant offset of 0.2 in a range of 2 gives 20 dB.
    assert evaluate.psnr(clip * 0, clip * 0 + 0.2) == pytest.approx(20.0)
    assert evaluate.frame_consistency(np.repeat(clip[:1], 3, axis=0)) == pytest.approx(1.0)
    assert evaluate.frame_consistency(clip) < 0.1  # independent noise frames


def test_edit_scores_of_a_perfect_and_a_failed_edit():
    source = synthetic.render(synthetic.Attributes("red", "circle", "right", "gray", "large", (0.3, 0.5),
                                                   (1.0, 2.0, 0.3)), 16, 64, 64)
    edited = synthetic.render(synthetic.Attributes("blue", "circle", "right", "gray", "large", (0.3, 0.5),
                                                   (1.0, 2.0, 0.3)), 16, 64, 64)
    prompt = "a blue circle moving right on a gray background"
    assert evaluate.edit_scores(edited, source, prompt) == dict(alignment=1.0, fidelity=1.0)
    assert evaluate.edit_scores(source, source, prompt) == dict(alignment=0.75, fidelity=1.0)
    assert evaluate.edit_scores(edited, source, "make it blue") is None


# ---- one sweep, interrupted and resumed ------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _stop_after_first(batch: int) -> None:
    if batch == 1:
        raise _Interrupt


@pytest.fixture(scope="module")
def two_stages(small):
    """The small cascade's base and tsr stages (`conftest.small_cascade_file`): a sweep is the same for any
    cascade, and the larger stages' batch-2 samplers would only add compile time."""
    return dataclasses.replace(small, stages=small.stages[:2], unets=small.unets[:2])


@pytest.fixture(scope="module")
def swept(two_stages, tmp_path_factory):
    """The smoke sweep stopped after its first batch, resumed, then run a third time; sampling
    compiles are counted around each run."""
    workdir = tmp_path_factory.mktemp("sweep")
    config = _smoke_config()
    compiled = [cascade._sample_chunk._cache_size()]
    with pytest.raises(_Interrupt):
        sweep.run(config, workdir, model=two_stages, on_batch=_stop_after_first)
    interrupted = sweep.read_manifest(workdir)
    compiled.append(cascade._sample_chunk._cache_size())
    resumed = sweep.run(config, workdir, model=two_stages)
    compiled.append(cascade._sample_chunk._cache_size())
    summary = json.loads((workdir / "summary.json").read_text())
    again = sweep.run(config, workdir, model=two_stages)
    compiled.append(cascade._sample_chunk._cache_size())
    return dict(workdir=workdir, config=config, interrupted=interrupted, resumed=resumed, summary=summary,
                again=again, again_summary=json.loads((workdir / "summary.json").read_text()), compiled=compiled)


def test_an_interrupted_sweep_resumes_without_redoing_trials(swept, two_stages):
    trials = sweep.trials_of(swept["config"], two_stages.stages)
    first = [t.id for t in trials if t.finetune.steps == 1]
    assert sorted(swept["interrupted"]) == sorted(first)  # the first batch: both edits of the 1-step finetune
    assert sorted(swept["resumed"]) == sorted(t.id for t in trials)
    assert swept["summary"]["ran"] == 2 and swept["summary"]["batches"] == 1 and swept["summary"]["batch_size"] == 2
    as_saved = lambda results: json.loads(json.dumps(results))  # noqa: E731
    for trial_id in first:  # finished trials are kept as they were, not redone
        assert as_saved(swept["resumed"])[trial_id] == swept["interrupted"][trial_id]
    assert swept["again_summary"]["ran"] == 0 and swept["again_summary"]["batches"] == 0
    assert swept["again"] == as_saved(swept["resumed"])


def test_sampling_compiles_once_per_stage_for_the_whole_sweep(swept, two_stages):
    before, after_first, after_resume, after_again = swept["compiled"]
    assert after_first - before <= len(two_stages.stages)  # fewer if an earlier test compiled the same shape
    assert after_resume == after_first == after_again  # later batches and runs reuse those programs


def test_the_report_and_the_trial_outputs(swept):
    workdir, results = swept["workdir"], swept["resumed"]
    page = (workdir / "report.html").read_text()
    assert "fidelity_alignment.png" in page and "input.gif" in page
    assert (workdir / "fidelity_alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for trial_id, result in results.items():
        assert (workdir / result["video"]).is_file() and (workdir / result["thumb"]).is_file()
        assert result["thumb"] in page and trial_id in page
        scores = result["scores"]
        assert set(scores) == {"alignment", "fidelity", "psnr", "ssim", "consistency"}
        assert 0 <= scores["alignment"] <= 1 and 0 <= scores["fidelity"] <= 1 and -1 <= scores["ssim"] <= 1
    assert len({r["finetune_key"] for r in results.values()}) == 2  # 1 and 2 steps


def test_a_finetune_kept_along_the_way_equals_a_shorter_run(swept, two_stages):
    config = swept["config"]
    trials = sweep.trials_of(config, two_stages.stages)
    one_step = next(t.finetune for t in trials if t.finetune.steps == 1)
    clip = edit.read_input(config.edit)[0]
    stored, record = dreamix.finetune(two_stages, clip, one_step, swept["workdir"], progress=False)
    assert record["reused"] is True
    fresh, _ = dreamix.finetune(two_stages, clip, one_step, progress=False)
    for a, b in zip(jax.tree.leaves(nnx.state(stored.unets[0], nnx.Param)),
                    jax.tree.leaves(nnx.state(fresh.unets[0], nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
