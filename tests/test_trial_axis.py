"""The `trial` axis: finetunes of one stage stacked in one program equal the same finetunes run one by
one, compile once, lie over the `trial` mesh axis, are stored where `finetune` finds them; their
edits sampled stacked equal each finetune's own, in one program per stage; and `sweep.run` stacks
the runs it can."""

import dataclasses
import functools
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs.sweeps import shapes_edit
from dreamix_jax import cascade, dreamix, sharding, sweep
from dreamix_jax.data import synthetic

# Two runs in one stack: lr, α and seed differ; the second runs a step longer, so the first is taken
# from a longer program at its own step count, and the second is also stored after its first step.
SETTINGS = (dreamix.FinetuneSettings(lr=5e-4, alpha=0.5, seed=1, steps=1),
            dreamix.FinetuneSettings(lr=1e-4, alpha=2.0, seed=2, steps=2),
            dreamix.FinetuneSettings(lr=1e-4, alpha=2.0, seed=2, steps=1))
RUNS = 2
# The devices of the trial-2 × data-2 mesh every stacked program here runs on (the sweep's too): each
# copy spans two devices, and the sweep below reuses the programs the fixtures compile.
DEVICES = 4


@pytest.fixture(scope="module")
def base_only(small):
    """The small cascade's base stage alone (`conftest.small_cascade_file`): stacking is the same for any
    stage and U-Net."""
    return small.base_only()


@pytest.fixture(scope="module")
def clip():
    attrs = synthetic.Attributes("green", "square", "left", "black", "large", (0.6, 0.5), (1.0, 2.0, 0.3))
    return synthetic.render(attrs, 8, 16, 16)


def _params(unet: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(unet, nnx.Param))]


def _record_steps(patch: pytest.MonkeyPatch, calls: list, programs: list) -> None:
    """Record each step program `dreamix` builds in `programs` and the weights of each call in `calls`."""
    original = dreamix._finetune_step

    def spy(*args, **kwargs):
        step = original(*args, **kwargs)
        programs.append(step)

        def run(params, *rest):
            calls.append(jax.tree.leaves(params))
            return step(params, *rest)

        return run

    patch.setattr(dreamix, "_finetune_step", spy)


@pytest.fixture(scope="module")
def stacked(base_only, clip, tmp_path_factory):
    """The two runs stacked on a trial-2 × data-2 mesh, with every call of the stacked step recorded."""
    workdir = tmp_path_factory.mktemp("trials")
    mesh = sharding.make_trial_mesh(RUNS, (-1, 1, 1), jax.devices()[:DEVICES])
    calls, programs = [], []
    with pytest.MonkeyPatch.context() as patch:
        _record_steps(patch, calls, programs)
        records = dreamix.finetune_trials(base_only, clip, SETTINGS, workdir, mesh=mesh, progress=False)
        again = dreamix.finetune_trials(base_only, clip, SETTINGS, workdir, mesh=mesh, progress=False)
    return dict(workdir=workdir, mesh=mesh, records=records, again=again, calls=calls, programs=programs)


def test_stacked_finetunes_equal_separate_ones(stacked, base_only, clip):
    for settings, record in zip(SETTINGS, stacked["records"], strict=True):
        alone, alone_record = dreamix.finetune(base_only, clip, settings, progress=False)
        stored, stored_record = dreamix.finetune(base_only, clip, settings, stacked["workdir"], progress=False)
        assert record["key"] == stored_record["key"] == dreamix.finetune_key(clip, settings, base_only)
        assert stored_record["reused"] is True and record["reused"] is False
        # The two programs sum in other orders, and Adam divides each gradient by its own size: an
        # element whose gradient is at rounding level can move by another part of a step (~lr, 1e-4 to
        # 5e-4). So: within a fifth of a step everywhere, and within 1e-6 for all but 0.1 % of them.
        far = total = 0
        for a, b in zip(_params(stored.unets[0]), _params(alone.unets[0]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=0.2 * settings.lr)
            far, total = far + int(np.sum(np.abs(a - b) > 1e-6)), total + a.size
        assert far <= 1e-3 * total, (far, total)
        for name in ("first_loss", "last_loss"):
            assert record["stages"]["base"][name] == pytest.approx(alone_record["stages"]["base"][name], rel=1e-5)


def test_the_stacked_step_compiles_once_and_lies_over_trial(stacked):
    (step,) = stacked["programs"]  # one stage, one program
    assert step._cache_size() == 1
    assert len(stacked["calls"]) == max(s.steps for s in SETTINGS)  # one call per step for all runs
    assert dict(stacked["mesh"].shape) == {"trial": 2, "data": 2, "fsdp": 1, "tensor": 1}
    for leaves in stacked["calls"]:
        for leaf in leaves:
            assert leaf.shape[0] == RUNS and leaf.sharding.spec[0] == "trial", leaf.sharding


def test_stored_finetunes_are_not_trained_again(stacked):
    assert [r["reused"] for r in stacked["again"]] == [True] * len(SETTINGS)
    assert len(stacked["calls"]) == max(s.steps for s in SETTINGS)  # the second call ran no step


def test_a_mesh_for_more_runs_than_are_left_is_filled_with_copies(stacked, base_only, clip, tmp_path, monkeypatch):
    """A resumed sweep sizes its mesh for all its runs: the one left to train fills the trial axis in
    copies, in the program already compiled, and only it is trained and stored."""
    workdir = tmp_path / "resumed"
    shutil.copytree(stacked["workdir"], workdir)
    shutil.rmtree(workdir / "finetunes" / dreamix.finetune_key(clip, SETTINGS[0], base_only))
    calls, programs = [], []
    _record_steps(monkeypatch, calls, programs)
    records = dreamix.finetune_trials(base_only, clip, SETTINGS, workdir, mesh=stacked["mesh"], progress=False)
    assert [r["reused"] for r in records] == [False, True, True]
    assert records[0]["trials_in_program"] == 1
    loss = records[0]["stages"]["base"]["last_loss"]
    assert loss == pytest.approx(stacked["records"][0]["stages"]["base"]["last_loss"], rel=1e-5)
    ((leaf, *_),) = calls  # one step of SETTINGS[0] alone
    assert leaf.shape[0] == RUNS
    assert programs == stacked["programs"] and programs[0]._cache_size() == 1  # no new compile
    resumed, _ = dreamix.finetune(base_only, clip, SETTINGS[0], workdir, progress=False)
    first, _ = dreamix.finetune(base_only, clip, SETTINGS[0], stacked["workdir"], progress=False)
    for a, b in zip(_params(resumed.unets[0]), _params(first.unets[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# Two edits per run: other prompts, seeds, s and guidance weights in every row.
REQUESTS = ((dreamix.EditRequest("a red square moving left on a black background", seed=0, s=0.6),
             dreamix.EditRequest("a blue circle moving right on a gray background", seed=1, s=0.9)),
            (dreamix.EditRequest("a green square moving left on a black background", seed=3, s=0.8),
             dreamix.EditRequest("a red square moving left on a black background", seed=0, s=0.6)))
GUIDANCE = ((1.0, 3.0), (2.5, 1.0))


@pytest.fixture(scope="module")
def sampled(stacked, base_only, clip):
    """The edits of the two stored runs sampled stacked on their trial mesh, twice (the second time with the
    row groups in another order), and the same edits sampled with each run's finetuned cascade on its own."""
    tuned = [dreamix.finetune(base_only, clip, s, stacked["workdir"], progress=False)[0] for s in SETTINGS[:RUNS]]
    before = cascade._sample_chunks._cache_size()
    videos, _ = dreamix.edit_trials(tuned, clip, [r for group in REQUESTS for r in group], mesh=stacked["mesh"],
                                    guidance=[g for group in GUIDANCE for g in group])
    order = (1, 0)
    again, _ = dreamix.edit_trials([tuned[i] for i in order], clip, [r for i in order for r in REQUESTS[i]],
                                   mesh=stacked["mesh"], guidance=[g for i in order for g in GUIDANCE[i]])
    alone = [dreamix.edit(t, clip, requests, guidance=list(g))[0]
             for t, requests, g in zip(tuned, REQUESTS, GUIDANCE, strict=True)]
    return dict(videos=videos, again=again, order=order, alone=alone,
                compiled=cascade._sample_chunks._cache_size() - before)


def test_stacked_edits_equal_each_finetunes_own(sampled):
    rows = len(REQUESTS[0])
    assert sampled["videos"].shape[0] == RUNS * rows
    for k, alone in enumerate(sampled["alone"]):
        np.testing.assert_allclose(sampled["videos"][k * rows:(k + 1) * rows], alone, atol=1e-4)
        slot = sampled["order"].index(k)
        np.testing.assert_allclose(sampled["again"][slot * rows:(slot + 1) * rows], alone, atol=1e-4)
    # The same request, seed and guidance with another finetune is another edit: each group had its own weights.
    assert np.abs(sampled["videos"][0] - sampled["videos"][3]).max() > 1e-3


def test_stacked_edits_compile_one_program_per_stage(sampled, base_only):
    assert sampled["compiled"] == len(base_only.stages)  # both calls, any order of finetunes and requests


def test_only_finetunes_with_one_program_stack(base_only, clip, tmp_path):
    video_only = dataclasses.replace(SETTINGS[0], alpha=0.0)  # another objective: another program
    with pytest.raises(ValueError, match="must share the prompt"):
        dreamix.finetune_trials(base_only, clip, [SETTINGS[0], video_only], tmp_path)
    assert dreamix.stack_key(SETTINGS[0], base_only.stages) == dreamix.stack_key(SETTINGS[2], base_only.stages)


def test_trial_meshes_keep_each_copy_laid_out_by_its_shape():
    shapes = {(4, (-1, 1, 1)): (4, 2, 1, 1), (3, (-1, 1, 1)): (1, 8, 1, 1), (8, (-1, 2, 1)): (4, 1, 2, 1),
              (4, (1, 2, 4)): (1, 1, 2, 4)}
    for (trials, shape), expected in shapes.items():
        mesh = sharding.make_trial_mesh(trials, shape)
        assert mesh.axis_names == ("trial", *sharding.MESH_AXES)
        assert tuple(mesh.shape.values()) == expected, (trials, shape)
    mesh = sharding.make_trial_mesh(4, (-1, 1, 2))  # trial 4 × tensor 2
    assert sharding.logical_to_spec(("trial", "conv_in", "conv_out"), (4, 8, 8), mesh) == P("trial", None, "tensor")
    # A model mesh has no trial axis: a stacked name there is simply replicated.
    assert sharding.logical_to_spec(("trial", "conv_out"), (4, 8), sharding.make_mesh((-1, 1, 2))) == P(None, "tensor")
    with pytest.raises(ValueError, match="at least 1 trial"):
        sharding.make_trial_mesh(0, (-1, 1, 1))


def test_a_sweep_stacks_its_runs(base_only, tmp_path, monkeypatch):
    """The smoke sweep with two learning rates hands both runs to one stacked finetune and their edits to
    one stacked sampling program; both are stubbed (tested above and in test_sweep.py), so the sweep
    trains each run on its own instead, and the manifest still names every finetune."""
    config = shapes_edit.get_config("smoke")
    config.edit.sampling_steps = 0
    config.finetune = dict(lr=(1e-4, 3e-4), steps=(1,))
    config.sample = dict(s=(0.5,), prompt=config.sample.prompt)
    config.trials_per_program = 2
    final = base_only.final
    blank = lambda rows: np.zeros((rows, final.frames, final.height, final.width, 3), np.float32)  # noqa: E731
    alone, programs, stacks = [], [], []
    monkeypatch.setattr(dreamix, "edit", lambda tuned, clip, requests, guidance=None: alone.append(requests))
    monkeypatch.setattr(dreamix, "edit_trials", lambda cascades, clip, requests, mesh, guidance: (
        programs.append((cascades, requests, dict(mesh.shape))), (blank(len(requests)), {}))[1])
    monkeypatch.setattr(dreamix, "finetune_trials", lambda model, clip, settings, workdir, mesh: stacks.append(
        (settings, dict(mesh.shape))))
    manifest = sweep.run(config, tmp_path, model=base_only)
    ((settings, mesh_shape),) = stacks
    assert sorted((s.lr, s.steps) for s in settings) == [(1e-4, 1), (3e-4, 1)]
    assert mesh_shape == {"trial": 2, "data": 4, "fsdp": 1, "tensor": 1}
    ((cascades, requests, sample_mesh_shape),) = programs  # one edit of each run: one program, no edit alone
    assert len(cascades) == len(requests) == 2 and not alone
    assert sample_mesh_shape == mesh_shape
    first, second = (_params(c.unets[0]) for c in cascades)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(first, second, strict=True))  # each run's own finetune
    clip = sweep.edit.read_input(config.edit)[0]
    assert sorted(entry["finetune_key"] for entry in manifest.values()) == sorted(
        dreamix.finetune_key(clip, s, base_only) for s in settings)
    assert json.loads((tmp_path / "summary.json").read_text())["finetunes_per_batch"] == 2


class _Interrupt(Exception):
    pass


def _stop_after_first(batch: int) -> None:
    if batch == 1:
        raise _Interrupt


def test_a_resumed_stacked_sweep_samples_in_its_one_program(stacked, sampled, base_only, tmp_path, monkeypatch):
    """Two stacking runs, four edits each in row groups of two: the first program samples the first run's
    two row groups; stopped there and resumed, the second run, alone now, is sampled in the same stacked
    program, and no plain sampler compiles. The sweep's mesh is the fixtures' (trial 2 × data 2), so it
    finetunes and samples in the programs they compiled: none of its own."""
    config = shapes_edit.get_config("smoke")
    config.edit.sampling_steps = 0
    config.finetune = dict(lr=(1e-4, 3e-4), steps=(1,))
    config.sample = dict(s=(0.5, 0.9), seed=(0, 1), prompt=config.sample.prompt)
    config.trials_per_program, config.batch_size = 2, 2
    monkeypatch.setattr(sweep, "make_trial_mesh",
                        functools.partial(sharding.make_trial_mesh, devices=jax.devices()[:DEVICES]))
    calls, programs = [], []
    _record_steps(monkeypatch, calls, programs)
    plain, stacked_samplers = cascade._sample_chunk._cache_size(), cascade._sample_chunks._cache_size()
    with pytest.raises(_Interrupt):
        sweep.run(config, tmp_path, model=base_only, on_batch=_stop_after_first)
    first = sweep.read_manifest(tmp_path)
    resumed = sweep.run(config, tmp_path, model=base_only)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(first) == 4 and len({e["finetune_key"] for e in first.values()}) == 1 and len(resumed) == 8
    assert len({e["finetune_key"] for e in resumed.values()}) == 2
    assert summary["ran"] == 4 and summary["batches"] == 1 and summary["finetunes_per_batch"] == 2
    assert len(calls) == 1 and programs == stacked["programs"]  # both runs in one step of the fixture's program
    assert programs[0]._cache_size() == 1
    assert cascade._sample_chunk._cache_size() == plain
    assert cascade._sample_chunks._cache_size() == stacked_samplers  # the stacked edits' program, per stage
