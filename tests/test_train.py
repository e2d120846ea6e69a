"""The training loop: exact resume after a stop signal or a crash (also from gs://), the NaN guard, logs."""

import functools
import json
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import gcs_names
from etils import epath
from flax import nnx

from configs import pretrain_shapes
from dreamix_jax import cascade, pretrained, probe, train
from dreamix_jax.models.t5 import T5Config
from dreamix_jax.models.text_to_video import TextToVideo
from dreamix_jax.data import shapes_video
from dreamix_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    shapes_video.build(path, "smoke")
    return path


def smoke_config(data_dir, **overrides):
    config = pretrain_shapes.get_config("base,smoke")
    config.data.data_dir = data_dir
    config.mesh.shape = (1, 4, 2)  # batch 4 over fsdp, weights over fsdp and tensor
    config.total_steps, config.checkpoint_every, config.lr_schedule = 4, 100, "constant"
    config.update(overrides)
    return config


def saved_params(workdir, step):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
    assert manager.latest_step() == step
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["params"]


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    """An uninterrupted 4-step run, probed every 2 steps: the reference the interrupted runs must match
    and the weights the warm start begins from."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    train.train(smoke_config(data_dir, probe_every=2, probe_clips=4), workdir)  # one clip per data shard
    return workdir


def test_a_stop_signal_and_a_crash_resume_to_match_an_uninterrupted_run(data_dir, straight, tmp_path):
    """Stopped by Ctrl-C after step 2, resumed and crashed after step 3 (its row logged, its checkpoint
    not saved), resumed again from checkpoint 2: the weights at step 4 are the uninterrupted run's, bit for
    bit, and every step is logged once."""
    def stop_at_two(step, metrics):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C (SIGTERM, a preemption, is handled the same way)

    def crash_after_three(step, metrics):
        if step == 3:
            raise RuntimeError("crash")

    resumed = str(tmp_path / "resumed")
    config = smoke_config(data_dir, checkpoint_every=1, keep_checkpoints=2)  # the straight run's compiled step
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background
    metrics = train.train(config, resumed, on_step=stop_at_two)
    assert metrics["step"] == 2
    at_two = saved_params(resumed, 2)  # the stop left a checkpoint
    assert signal.getsignal(signal.SIGINT) is handler  # and the handler was put back
    with pytest.raises(RuntimeError, match="crash"):
        train.train(config, resumed, on_step=crash_after_three)  # rows 1–3 logged, checkpoint 3 not saved
    assert [json.loads(line)["step"] for line in open(os.path.join(resumed, "metrics.jsonl"))] == [1, 2, 3]
    with open(os.path.join(resumed, "metrics.jsonl"), "a") as log:
        log.write('{"step": 3, "loss": 0.1')  # and a row torn by the crash
    train.train(config, resumed)
    rows = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["3", "4"]  # keep_checkpoints 2

    a, b = saved_params(straight, 4), saved_params(resumed, 4)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit
    # Steps 3 and 4 moved the weights: equality above is not two untouched copies.
    assert any(np.abs(np.asarray(x) - np.asarray(y)).max() > 0
               for x, y in zip(leaves_a, jax.tree.leaves(at_two), strict=True))
    straight_rows = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows if "loss" in r]


def test_a_run_logs_losses_probes_config_and_tensorboard(straight):
    rows = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
    logs = [m for m in rows if "loss" in m]
    probes = [m for m in rows if "probe/shape" in m]
    assert [m["step"] for m in logs] == [1, 2, 3, 4] and [m["step"] for m in probes] == [2, 4]
    assert all(np.isfinite(m[f"probe/{a}@{t:g}"]) for m in probes for a in probe.ATTRIBUTES for t in probe.TIMES)
    assert all(np.isfinite(m["loss"]) and m["examples_per_s"] > 0 and m["flops_per_s"] > 0 for m in logs)
    assert json.load(open(os.path.join(straight, "config.json")))["stage"] == "base"
    assert os.listdir(os.path.join(straight, "tensorboard"))


def test_an_sr_stage_reads_the_base_runs_text_encoder(data_dir, straight, tmp_path):
    """An SR stage reads a base run's text encoder (frozen), weight for weight."""
    config = smoke_config(data_dir)
    stage = {s.name: s for s in cascade.stages_from_config(config.cascade)}["ssr1"]
    model = TextToVideo(stage.unet, T5Config.from_config(config.cascade.text.model), rngs=nnx.Rngs(7))
    loaded = nnx.to_flat_state(train.load_text_encoder(straight, model))
    saved = saved_params(straight, 4)["text_encoder"]
    assert len(loaded) > 0
    for path, variable in loaded:
        expected = functools.reduce(lambda tree, key: tree[str(key)], path, saved)
        expected = expected["value"] if isinstance(expected, dict) else expected  # Orbax's Variable level
        np.testing.assert_array_equal(np.asarray(variable.get_value()), np.asarray(expected))
    with pytest.raises(FileNotFoundError, match="No checkpoint in"):
        train.load_text_encoder(str(tmp_path / "nothing"), model)


def test_a_warm_start_begins_from_the_given_weights_and_counts_their_steps(data_dir, straight, tmp_path):
    warm = str(tmp_path / "warm")
    # lr 0 (a traced value: the same compiled step) keeps the weights where the warm start put them.
    train.train(smoke_config(data_dir, init_from=straight, lr=0.0), warm)
    start, kept = saved_params(straight, 4), saved_params(warm, 4)
    assert set(start) == set(kept) == {"unet", "text_encoder"}
    for x, y in zip(jax.tree.leaves(start), jax.tree.leaves(kept), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    steps, weights = pretrained.stage_weights(warm, "base")
    assert steps == 8  # its own 4 and the 4 it started from
    # The smoke base stage beside the shipped SR stages, in one file that loads as a cascade.
    cascade_config = smoke_config(data_dir).cascade
    out = pretrained.export(cascade_config, dict(
        base=warm, tsr=str(pretrained.SHIPPED), ssr1=str(pretrained.SHIPPED), ssr2=str(pretrained.SHIPPED)),
        tmp_path / "warm.npz")
    arrays, meta = pretrained.read_file(out)
    assert meta["steps"]["base"] == 8
    for name, value in weights.items():
        np.testing.assert_array_equal(arrays[name.replace("unet/", "base/", 1)], value, err_msg=name)
    loaded = pretrained.load(out, mesh=make_mesh((1, 1, 1), jax.devices()[:1]))  # every weight fits its stage
    assert [s.unet for s in loaded.stages] == [s.unet for s in cascade.stages_from_config(cascade_config)]
    with pytest.raises(KeyError, match="holds no stage 'ssr9'"):
        pretrained.stage_weights(str(pretrained.SHIPPED), "ssr9")


def test_a_run_on_gcs_checkpoints_and_logs_there_and_resumes_from_there(gcs_bucket, tmp_path, monkeypatch):
    """A crash as above with workdir and data dir on gs://: the run resumes from its gs:// checkpoint 2
    and recomputes step 3 exactly (weights, optimizer state and data iterator came back whole). The
    dataset is built and uploaded by the first run and downloaded by the second, as by another host."""
    data_dir, workdir = f"{gcs_bucket}/tfds", f"{gcs_bucket}/train/base"

    def crash_after_three(step, metrics):
        if step == 3:
            raise RuntimeError("crash")

    config = smoke_config(data_dir, checkpoint_every=2, keep_checkpoints=2)  # the same compiled step as above
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "first_host"))
    with pytest.raises(RuntimeError, match="crash"):
        train.train(config, workdir, on_step=crash_after_three)
    crashed = [json.loads(r) for r in epath.Path(workdir, "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in crashed] == [1, 2, 3] and gcs_names(f"{workdir}/checkpoints") == ["2"]
    assert epath.Path(data_dir, "shapes_video/smoke/1.0.0/dataset_info.json").exists()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "second_host"))
    assert train.train(config, workdir)["step"] == 4
    assert (tmp_path / "second_host/dreamix_jax/tfds/dreamix-test/tfds/shapes_video/smoke/1.0.0").is_dir()
    rows = [json.loads(r) for r in epath.Path(workdir, "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert (rows[2]["loss"], rows[2]["grad_norm"]) == (crashed[2]["loss"], crashed[2]["grad_norm"])
    assert gcs_names(f"{workdir}/checkpoints") == ["2", "4"]
    assert json.loads(epath.Path(workdir, "config.json").read_text())["stage"] == "base"
    assert gcs_names(f"{workdir}/tensorboard")[0].startswith("events.out.tfevents.")
    steps, weights = pretrained.stage_weights(workdir, "base")  # what an export reads from a gs:// workdir
    assert steps == 4 and np.isfinite(weights["unet/conv_out/kernel"]).all()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    workdir = str(tmp_path / "nan")
    config = smoke_config(data_dir, lr=1e30, checkpoint_every=1)  # the same compiled step as above
    with pytest.raises(FloatingPointError, match=r"at step (\d); stopping\. The last good checkpoint is step"):
        train.train(config, workdir)
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
    logs = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert manager.latest_step() == logs[-1]["step"] and all(np.isfinite(m["loss"]) for m in logs)


def test_training_crops_are_for_sr_stages_only(data_dir, tmp_path):
    with pytest.raises(ValueError, match="train_crop applies to SR stages only"):
        train.train(smoke_config(data_dir, train_crop=(2, 8)), str(tmp_path / "crop"))
    sr = pretrain_shapes.get_config("ssr1,smoke")
    for crop in [(4, 16, 16), (4, 0)]:
        sr.train_crop = crop
        with pytest.raises(ValueError, match=r"give \(frames, pixels\), two positive integers"):
            train.check_config(sr)


def test_a_workdir_url_other_than_gcs_is_refused_before_any_work(data_dir):
    with pytest.raises(ValueError, match=r"^s3://b/train is a s3:// URL; give a local path or a gs:// URL\.$"):
        train.train(smoke_config(data_dir), "s3://b/train")
