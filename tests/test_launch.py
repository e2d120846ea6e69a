"""The Cloud TPU launch scripts in launch/, run against a fake `gcloud` that records its argv.

No TPU, network or JAX is involved: each test checks the gcloud command lines a script builds,
and the run tests also execute the command meant for the workers, locally, with fake `python3`,
`pkill` and `pgrep` (so that nothing on this machine can be stopped by it).
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["create.sh", "delete.sh", "setup.sh", "run.sh", "finetune.sh", "sample.sh", "sweep.sh"]
BUCKET = "gs://bucket/dreamix"
GCLOUD_FLAGS = ["--zone=europe-west4-a", "--project=proj"]
SSH = ["compute", "tpus", "tpu-vm", "ssh", "test-tpu", *GCLOUD_FLAGS, "--worker=all"]
# A prompt that breaks naive quoting: spaces, both quote kinds, a comma, a $ and a backslash.
PROMPT = """--config.prompt=a bear's "dance", in $HOME \\ snow"""


def _write_exe(path: pathlib.Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def env(tmp_path):
    """Environment for the scripts: a fake gcloud first on PATH, logging argv to $FAKE_GCLOUD_LOG."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_exe(bin_dir / "gcloud", f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
""")
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.log"),
        "TPU_NAME": "test-tpu",
        "ZONE": "europe-west4-a",
        "PROJECT": "proj",
        "ACCELERATOR_TYPE": "v5litepod-16",
        "BUCKET": BUCKET,
    }


def run_script(env, name, *args, check=True):
    result = subprocess.run(["bash", str(LAUNCH / name), *args], env=env, capture_output=True,
                            text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def gcloud_calls(env):
    log = pathlib.Path(env["FAKE_GCLOUD_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def only_call(env):
    calls = gcloud_calls(env)
    assert len(calls) == 1, calls
    return calls[0]


def ssh_command(call):
    """The --command of a `gcloud ... ssh --worker=all` call."""
    assert call[:len(SSH)] == SSH, call
    assert len(call) == len(SSH) + 1 and call[-1].startswith("--command="), call
    return call[-1].removeprefix("--command=")


def jax_version():
    return re.search(r"^jax==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)


# ------------------------------------------------------------------------------------------------
# Creating, deleting and setting up the TPU.
# ------------------------------------------------------------------------------------------------


def test_create(env):
    run_script(env, "create.sh")
    assert only_call(env) == ["compute", "tpus", "tpu-vm", "create", "test-tpu", *GCLOUD_FLAGS,
                              "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite"]


def test_create_queued(env):
    run_script(env | {"QUEUED": "1", "RUNTIME_VERSION": "v2-alpha-tpuv6e"}, "create.sh")
    assert only_call(env) == ["compute", "tpus", "queued-resources", "create", "test-tpu",
                              "--node-id=test-tpu", *GCLOUD_FLAGS, "--accelerator-type=v5litepod-16",
                              "--runtime-version=v2-alpha-tpuv6e"]


def test_delete(env):
    run_script(env, "delete.sh")
    assert only_call(env) == ["compute", "tpus", "tpu-vm", "delete", "test-tpu", *GCLOUD_FLAGS, "--quiet"]


def test_delete_queued(env):
    run_script(env | {"QUEUED": "1"}, "delete.sh")
    assert only_call(env) == ["compute", "tpus", "queued-resources", "delete", "test-tpu", *GCLOUD_FLAGS,
                              "--quiet", "--force"]


def test_no_project_flag_without_project(env):
    del env["PROJECT"]
    run_script(env, "delete.sh")
    assert only_call(env) == ["compute", "tpus", "tpu-vm", "delete", "test-tpu", "--zone=europe-west4-a",
                              "--quiet"]


def test_setup(env):
    run_script(env, "setup.sh")
    move_aside, scp, install = gcloud_calls(env)
    # An earlier copy is moved aside, or scp would nest the new one inside it.
    assert ssh_command(move_aside) == (
        "if [ -e ~/dreamix_jax ]; then rm -rf ~/dreamix_jax.old && mv ~/dreamix_jax ~/dreamix_jax.old; fi")
    assert scp == ["compute", "tpus", "tpu-vm", "scp", "--recurse", str(REPO), "test-tpu:~/dreamix_jax",
                   *GCLOUD_FLAGS, "--worker=all"]
    assert ssh_command(install) == (
        f"cd ~/dreamix_jax && python3 -m pip install -r requirements.txt -e . 'jax[tpu]=={jax_version()}'")


def test_setup_repo_dir_with_space(env):
    run_script(env | {"REPO_DIR": "/opt/my repo", "PYTHON": "python3.11"}, "setup.sh")
    _, scp, install = gcloud_calls(env)
    assert scp[6] == "test-tpu:/opt/my repo"
    assert shlex.split(ssh_command(install))[:6] == ["cd", "/opt/my repo", "&&", "python3.11", "-m", "pip"]


# ------------------------------------------------------------------------------------------------
# Running: run.sh and its wrappers.
# ------------------------------------------------------------------------------------------------

# script: (its arguments, the program's argv on the workers, the upload after it or None)
WRAPPERS = {
    "finetune.sh": (["base", "--config.batch_size=64", PROMPT],
                    ["dreamix_jax.train", "--config", "configs/pretrain_shapes.py:base",
                     "--workdir", "outputs/train/base", "--config.distributed=true",
                     "--config.batch_size=64", PROMPT], ["outputs/train/base", f"{BUCKET}/train/base"]),
    "sample.sh": (["video", PROMPT],
                  ["dreamix_jax.edit", "--config", "configs/dreamix.py:video", "--workdir", "outputs/edit", PROMPT],
                  ["outputs/edit", f"{BUCKET}/edit"]),
    "sweep.sh": (["shapes_edit:smoke", "--config.batch_size=4"],
                 ["dreamix_jax.sweep", "--config", "configs/sweeps/shapes_edit.py:smoke",
                  "--workdir", "outputs/sweeps/shapes_edit-smoke", "--config.batch_size=4"],
                 ["outputs/sweeps/shapes_edit-smoke", f"{BUCKET}/sweeps/shapes_edit-smoke"]),
}
LOG = [">", "logs/worker-$(hostname).log", "2>&1"]


def python_line(command):
    """The line of a run command that starts the program, split as the workers' shell would."""
    line = command.splitlines()[-1]
    assert line.startswith("cd ~/dreamix_jax && mkdir -p logs && "), line
    return shlex.split(line.split(" && ", 2)[2], posix=True)


def program_and_upload(command):
    """(the program's argv, the upload's argv or None) of a run command."""
    words = python_line(command)
    assert words[-3:] == LOG, words
    if words[:2] != ["bash", "-c"]:
        return words[:-3], None
    assert len(words) == 6, words
    inner = shlex.split(words[2], posix=True)
    split = inner.index("&&")
    return inner[:split], inner[split + 1:]


def test_run(env):
    run_script(env, "run.sh", "dreamix_jax.train", "--config", "configs/pretrain_shapes.py:base")
    command = ssh_command(only_call(env))  # ssh_command checks --worker=all
    # Stale runs are stopped before the new one starts.
    assert command.index("pkill -f") < command.index("python3 -m dreamix_jax.train")
    assert command.splitlines()[-1] == (
        "cd ~/dreamix_jax && mkdir -p logs && python3 -m dreamix_jax.train "
        "--config configs/pretrain_shapes.py:base > logs/worker-$(hostname).log 2>&1")


def test_run_detach(env):
    run_script(env | {"DETACH": "1"}, "run.sh", "dreamix_jax.train")
    last = ssh_command(only_call(env)).splitlines()[-1]
    assert last.endswith("&& nohup python3 -m dreamix_jax.train > logs/worker-$(hostname).log 2>&1 < /dev/null &")


def test_stop_pattern_spares_the_shell_running_it(env):
    """pkill -f matches whole command lines: the pattern must not match the shell running the
    command (whose line holds the pattern and the python command), only the programs."""
    run_script(env, "run.sh", "dreamix_jax.train")
    command = ssh_command(only_call(env))
    pattern = re.search(r"pkill -f '([^']*)'", command).group(1)
    for program in ["python3 -m dreamix_jax.train --config x", "python -m dreamix_jax.edit",
                    "/home/u/venv/bin/python3.11 -m dreamix_jax.sweep --workdir gs://b"]:
        assert re.search(pattern, program), program
    for other in [f"bash -c {command}", f"/bin/bash -c {command}", "python3 -m pip install -e .",
                  "python3 train.py -m dreamix_jax"]:
        assert not re.search(pattern, other), other


@pytest.mark.parametrize("script", WRAPPERS)
def test_wrapper_command(env, script):
    args, expected, upload = WRAPPERS[script]
    run_script(env, script, *args)
    command = ssh_command(only_call(env))
    assert "pkill -f" in command
    program, upload_argv = program_and_upload(command)
    assert program == ["python3", "-m", *expected]
    assert upload_argv == (None if upload is None else ["gcloud", "storage", "rsync", "--recursive", *upload])


@pytest.mark.parametrize("script", WRAPPERS)
def test_wrapper_command_runs_on_a_worker(env, script, tmp_path):
    """Executes the workers' command here with bash and fake programs: the arguments must reach
    python exactly, the log must be per worker, and a local workdir is uploaded after the program."""
    args, expected, upload = WRAPPERS[script]
    run_script(env, script, *args)
    command = ssh_command(only_call(env))

    worker_bin = tmp_path / "worker_bin"
    worker_bin.mkdir()
    for name in ["pkill", "pgrep"]:  # "no such process": nothing on this machine is signalled
        _write_exe(worker_bin / name, f"#!/bin/sh\necho {name} \"$@\" >> {tmp_path}/stop.log\nexit 1\n")
    _write_exe(worker_bin / "python3", f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    _write_exe(worker_bin / "gcloud", f"#!{sys.executable}\nimport json, sys\n"
                                      f"open({str(tmp_path / 'upload.log')!r}, 'a').write(json.dumps(sys.argv[1:]))\n")
    worker_path = f"{worker_bin}{os.pathsep}/usr/bin{os.pathsep}/bin"
    for name in ["pkill", "pgrep", "python3", "gcloud"]:
        assert shutil.which(name, path=worker_path) == str(worker_bin / name)
    home = tmp_path / "worker_home"
    (home / "dreamix_jax").mkdir(parents=True)

    subprocess.run(["bash", "-c", command], env={"PATH": worker_path, "HOME": str(home)}, check=True,
                   timeout=60)
    logs = list((home / "dreamix_jax" / "logs").iterdir())
    assert [p.name for p in logs] == [f"worker-{socket.gethostname()}.log"]
    assert json.loads(logs[0].read_text()) == ["-m", *expected]
    assert (tmp_path / "stop.log").read_text().startswith("pkill -f ")
    uploaded = tmp_path / "upload.log"
    if upload is None:
        assert not uploaded.exists()
    else:
        assert json.loads(uploaded.read_text()) == ["storage", "rsync", "--recursive", *upload]


def test_a_shared_workdir_on_a_pod_is_not_uploaded(env):
    run_script(env | {"WORKDIR_ROOT": "/mnt/bucket/dreamix/"}, "finetune.sh", "base")
    program, upload = program_and_upload(ssh_command(only_call(env)))
    assert program[program.index("--workdir") + 1] == "/mnt/bucket/dreamix/train/base" and upload is None


def test_no_upload_after_a_failed_program(env, tmp_path):
    run_script(env, "sweep.sh", "shapes_edit")
    command = ssh_command(only_call(env))
    worker_bin = tmp_path / "worker_bin"
    worker_bin.mkdir()
    for name in ["pkill", "pgrep", "python3"]:
        _write_exe(worker_bin / name, "#!/bin/sh\nexit 1\n")
    _write_exe(worker_bin / "gcloud", f"#!/bin/sh\ntouch {tmp_path}/uploaded\n")
    home = tmp_path / "worker_home"
    (home / "dreamix_jax").mkdir(parents=True)
    result = subprocess.run(["bash", "-c", command], env={"PATH": f"{worker_bin}{os.pathsep}/usr/bin{os.pathsep}/bin",
                                                          "HOME": str(home)}, timeout=60)
    assert result.returncode != 0 and not (tmp_path / "uploaded").exists()


def test_unknown_sweep_and_bad_upload(env):
    result = run_script(env, "sweep.sh", "nonexistent", check=False)
    assert result.returncode != 0 and "configs/sweeps/nonexistent.py" in result.stderr
    result = run_script(env | {"UPLOAD": "outputs /local/dir"}, "run.sh", "dreamix_jax.edit", check=False)
    assert result.returncode != 0 and "UPLOAD must be" in result.stderr
    assert gcloud_calls(env) == []


@pytest.mark.parametrize("script", ["finetune.sh", "sample.sh", "sweep.sh"])
def test_wrapper_needs_bucket(env, script):
    for bucket in [None, "/local/dir"]:
        if bucket is None:
            env.pop("BUCKET")
        else:
            env["BUCKET"] = bucket
        result = run_script(env, script, "base", check=False)
        assert result.returncode != 0
        assert "BUCKET" in result.stderr
    assert gcloud_calls(env) == []


@pytest.mark.parametrize("script", ["run.sh", "finetune.sh", "sample.sh", "sweep.sh"])
def test_missing_argument_is_a_usage_error(env, script):
    result = run_script(env, script, check=False)
    assert result.returncode != 0 and "usage:" in result.stderr
    assert gcloud_calls(env) == []


# ------------------------------------------------------------------------------------------------
# Every script.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_tpu_name(env, script):
    del env["TPU_NAME"]
    result = run_script(env, script, "base", check=False)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1 and "TPU_NAME" in result.stderr
    assert gcloud_calls(env) == []


@pytest.mark.parametrize("script", SCRIPTS + ["common.sh"])
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True, timeout=30)


@pytest.mark.parametrize("script", SCRIPTS + ["common.sh"])
def test_header_documents_environment(script):
    """Every variable a script reads with a default (${VAR:-...}) is named in its header comment."""
    text = (LAUNCH / script).read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    for name in set(re.findall(r"\$\{([A-Z_]+):-", text)):
        assert name in header, f"{script} reads {name} but its header does not say so"


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    scripts = sorted(str(p.relative_to(REPO)) for p in LAUNCH.glob("*.sh"))
    result = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
