"""Every expected failure of `edit`, `sweep` and `train` is one sentence, before any model, data or
compile work, with nothing written; a busy workdir is refused; Ctrl-C ends cleanly."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import dreamix as dreamix_configs
from configs import pretrain_shapes
from configs.sweeps import shapes_edit
from dreamix_jax import cli, edit, pretrained, sweep, train
from dreamix_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def package_logging():
    """`cli.run` sets up the program's logging; put the loggers back for the other tests."""
    loggers = [logging.getLogger(name) for name in ("dreamix_jax", "__main__")]
    saved = [(logger.handlers[:], logger.propagate, logger.level) for logger in loggers]
    yield
    for logger, (handlers, propagate, level) in zip(loggers, saved, strict=True):
        logger.handlers[:], logger.propagate, logger.level = handlers, propagate, level


def test_info_lines_reach_the_terminal_once(capfd):
    cli.setup_logging()
    cli.setup_logging()  # idempotent: no second handler
    logging.getLogger("__main__").info("Resumed from step 7.")  # a program's own module logs as __main__
    logging.getLogger("dreamix_jax.dreamix").info("Reusing the finetune.")
    err = capfd.readouterr().err
    assert err.count("INFO __main__: Resumed from step 7.") == 1
    assert err.count("INFO dreamix_jax.dreamix: Reusing the finetune.") == 1


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model, building one or reading training data fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model (or data) was loaded before the settings were checked")
    monkeypatch.setattr(pretrained, "load", refuse)
    monkeypatch.setattr(train, "_model_init", refuse)
    monkeypatch.setattr(train.shapes_video, "source", refuse)


def fails_with(run_fn, config, workdir, purpose: str, message: str) -> None:
    """`run_fn` through the command-line runner ends with one sentence matching `message`, exit code 1,
    and leaves nothing in the workdir but its lock file."""
    with pytest.raises(SystemExit) as stop:
        cli.run(run_fn, config, str(workdir), purpose=purpose)
    text = stop.value.code
    assert isinstance(text, str) and text.startswith("error: ") and "\n" not in text, text  # exit code 1
    assert message.lower() in text.lower(), text
    left = sorted(p.name for p in workdir.iterdir()) if workdir.is_dir() else []
    assert left in ([], [workdir_lib.LOCK_NAME]), left


def _weights_file(tmp_path, kind: str) -> str:
    path = tmp_path / f"{kind}.npz"
    if kind == "truncated":
        path.write_bytes(pretrained.SHIPPED.read_bytes()[:100_000])
    elif kind == "foreign":
        np.savez(path, x=np.zeros(3))
    elif kind == "text":
        path.write_text("not weights")
    return str(path)


EDIT_CASES = [
    (dict(sampling_steps=-3), "sampling_steps is -3"),
    (dict(guidance=-1.0), "guidance is -1.0"),
    (dict(guidance=float("nan")), "guidance is nan"),
    (dict(s=2.0), "outside [0, 1]"),
    (dict(num_seeds=0), "at least one seed"),
    (dict(prompt=" "), "prompt is empty"),
    (dict(input="/nonexistent/clip.mp4"), "does not exist"),
    (dict(finetune=dict(steps=-1)), "steps is -1"),
    (dict(finetune=dict(lr=float("nan"))), "lr=nan"),
    (dict(finetune=dict(lr=0.0)), "lr is 0"),
    (dict(finetune=dict(alpha=-1.0)), "alpha=-1.0"),
    (dict(finetune=dict(alpha=0.0, w_video=0.0)), "both w_video and alpha are 0"),
    (dict(finetune=dict(stages="base,ssr9")), "unknown stages ['ssr9']"),
    (dict(finetune=dict(prompt="")), "finetuning prompt is empty"),
    (dict(variant="image", camera=dict(amount=-1.0)), "camera.amount is -1.0"),
    (dict(weights="truncated"), "cannot read cascade weights"),
    (dict(weights="foreign"), "cannot read cascade weights"),
    (dict(weights="text"), "cannot read cascade weights"),
    (dict(weights="/nonexistent/weights.npz"), "not found"),
]


@pytest.mark.parametrize("change, message", EDIT_CASES, ids=lambda c: json.dumps(c) if isinstance(c, dict) else "")
def test_edit_settings_fail_before_the_model_loads(no_model, tmp_path, change, message):
    config = dreamix_configs.get_config("video")
    config.prompt = "a green circle moving right on a gray background"
    if change.get("weights") in ("truncated", "foreign", "text"):
        change = dict(change, weights=_weights_file(tmp_path, change["weights"]))
    config.update(change)
    fails_with(edit.run, config, tmp_path / "work", "edit", message)


SWEEP_CASES = [
    (dict(finetune=dict(alpha=())), "has no values"),
    (dict(finetune=dict(beta=(1.0,))), "unknown finetune settings ['beta']"),
    (dict(sample=dict(guidance=(-2.0,))), "not a finite weight"),
    (dict(sample=dict(s=(0.5, 1.5))), "outside [0, 1]"),
    (dict(finetune=dict(lr=(float("nan"),))), "lr=nan"),
    (dict(mode="random"), "unknown sweep mode"),
    (dict(batch_size=0), "batch_size is 0"),
    (dict(edit=dict(sampling_steps=-1)), "sampling_steps is -1"),
]


@pytest.mark.parametrize("change, message", SWEEP_CASES, ids=lambda c: json.dumps(c) if isinstance(c, dict) else "")
def test_sweep_settings_fail_before_the_model_loads(no_model, tmp_path, change, message):
    config = shapes_edit.get_config("smoke")
    with config.unlocked():  # sweep sections take any key: unknown ones are what is checked
        for key, value in change.items():
            if isinstance(value, dict):
                config[key].update(value)
            else:
                config[key] = value
    fails_with(sweep.run, config, tmp_path / "work", "sweep", message)


TRAIN_CASES = [
    (dict(stage="ssr9"), "unknown stage 'ssr9'"),
    (dict(lr=-1.0), "lr is -1.0"),
    (dict(time_power=0.0), "must be above 0"),
    (dict(total_steps=0), "total_steps is 0"),
    (dict(batch_size=0), "batch_size is 0"),
    (dict(text_dropout=1.5), "text_dropout is 1.5"),
    (dict(w_video=0.0, alpha=0.0), "nothing to train"),
    (dict(lr_schedule="linear"), "unknown lr_schedule"),
    (dict(train_crop=(2, 8)), "sr stages only"),
    (dict(keep_checkpoints=0), "keep_checkpoints is 0"),
]


@pytest.mark.parametrize("change, message", TRAIN_CASES, ids=lambda c: json.dumps(c) if isinstance(c, dict) else "")
def test_train_settings_fail_before_any_data_or_model(no_model, tmp_path, change, message):
    config = pretrain_shapes.get_config("base,smoke")
    config.update(change)
    fails_with(train.train, config, tmp_path / "work", "train", message)


def test_a_workdir_that_is_a_file_is_one_sentence(no_model, tmp_path):
    workdir = tmp_path / "file"
    workdir.write_text("keep me")
    with pytest.raises(SystemExit, match="is a file; give a folder"):
        cli.run(train.train, pretrain_shapes.get_config("base,smoke"), str(workdir), purpose="train")
    assert workdir.read_text() == "keep me"


def test_a_busy_workdir_is_refused_naming_its_holder(no_model, tmp_path):
    config = dreamix_configs.get_config("video")
    config.prompt = "a green circle moving right on a gray background"
    with workdir_lib.lock(tmp_path, "train"):
        with pytest.raises(SystemExit, match=rf"in use by pid {os.getpid()} .*\(train, started"):
            cli.run(edit.run, config, str(tmp_path), purpose="edit")


def test_a_bug_keeps_its_traceback(tmp_path):
    def buggy(config, workdir):
        return np.zeros(2).reshape(3)  # ValueError raised inside numpy, not by this project

    with pytest.raises(ValueError, match="cannot reshape"):
        cli.run(buggy, None, str(tmp_path), purpose="edit")


# ---- the programs themselves: flags, configs from any folder, Ctrl-C ----------------------------------


def _program(args: list[str], cwd, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("args, message", [
    (["dreamix_jax.edit", "--config", "configs/dreamix.py:video", "--config.nonsense=3"],
     "error: Unknown setting --config.nonsense: the config has no key 'nonsense'"),
    (["dreamix_jax.train", "--config", "configs/pretrain_shapes.py:ssr9"], "error: Unknown stage 'ssr9'"),
    # Found from another folder, and checked before the model loads.
    (["dreamix_jax.edit", "--config", "configs/dreamix.py:video", "--config.prompt=a red circle",
      "--config.sampling_steps=-3"], "error: sampling_steps is -3"),
])
def test_the_programs_end_bad_flags_with_a_sentence(tmp_path, args, message):
    process = _program([*args, f"--workdir={tmp_path / 'work'}"], cwd=tmp_path)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith(message), err


def test_ctrl_c_ends_an_edit_with_exit_code_130(tmp_path):
    process = _program(["dreamix_jax.edit", "--config", "configs/dreamix.py:video", f"--workdir={tmp_path}",
                        "--config.prompt=a red circle moving up on a gray background"], cwd=ROOT)
    time.sleep(8)  # past the checks, while the model loads or compiles
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "error: Interrupted. What was finished is kept" in err
