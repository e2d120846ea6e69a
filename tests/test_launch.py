"""The Cloud TPU launch scripts in launch/, run against a fake `gcloud` (tests/fake_gcloud.py) that
records its argv and models one slice's state.

No TPU, network or JAX is involved: each test checks the gcloud command lines a script builds,
and the run tests also execute the command meant for the workers, locally, with fake `python3`,
`pkill` and `pgrep` (so that nothing on this machine can be stopped by it). The supervise.sh tests
let the fake `python3` preempt the fake slice mid-run.
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

from tests import fake_gcloud

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["create.sh", "delete.sh", "setup.sh", "run.sh", "finetune.sh", "sample.sh", "sweep.sh", "supervise.sh"]
BUCKET = "gs://bucket/dreamix"
GCLOUD_FLAGS = ["--zone=europe-west4-a", "--project=proj"]
SSH = ["compute", "tpus", "tpu-vm", "ssh", "test-tpu", *GCLOUD_FLAGS, "--worker=all",
       "--ssh-flag=-oServerAliveInterval=60", "--ssh-flag=-oServerAliveCountMax=5"]
# A prompt that breaks naive quoting: spaces, both quote kinds, a comma, a $ and a backslash.
PROMPT = """--config.prompt=a bear's "dance", in $HOME \\ snow"""


def _write_exe(path: pathlib.Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def env(tmp_path):
    """Environment for the scripts: tests/fake_gcloud.py first on PATH as gcloud, logging argv to
    $FAKE_GCLOUD_LOG, with no slice yet, and no sleeping between two looks at a queued resource."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_exe(bin_dir / "gcloud", f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                                   f"{shlex.quote(str(REPO / 'tests' / 'fake_gcloud.py'))} \"$@\"\n")
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.log"),
        "FAKE_GCLOUD_STATE": str(tmp_path / "gcloud_state.json"),
        "TPU_NAME": "test-tpu",
        "ZONE": "europe-west4-a",
        "PROJECT": "proj",
        "ACCELERATOR_TYPE": "v5litepod-16",
        "BUCKET": BUCKET,
        "POLL_SECONDS": "0",
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


QR_DESCRIBE = ["compute", "tpus", "queued-resources", "describe", "test-tpu", *GCLOUD_FLAGS,
               "--format=value(state.state)"]
NODE_DESCRIBE = ["compute", "tpus", "tpu-vm", "describe", "test-tpu", *GCLOUD_FLAGS, "--format=value(state)"]


def set_slice(env, queued=None, node=None):
    """The fake's slice: the queued resource's and the TPU's states (None: it does not exist)."""
    pathlib.Path(env["FAKE_GCLOUD_STATE"]).write_text(json.dumps({"queued": queued, "node": node}))


def slice_state(env):
    return json.loads(pathlib.Path(env["FAKE_GCLOUD_STATE"]).read_text())


def step(call):
    """A gcloud call in a few words: `KIND VERB`, or what its command on the workers does."""
    kind, verb = call[2:4]
    if verb == "ssh":
        command = ssh_command(call)
        if "pip install" in command:
            return "setup: install"
        if command.startswith("if [ -e "):
            return "setup: move aside"
        assert "-m dreamix_jax." in command, command
        return "run"
    return "setup: copy" if verb == "scp" else f"{kind} {verb}"


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
    result = run_script(env | {"QUEUED": "1", "RUNTIME_VERSION": "v2-alpha-tpuv6e"}, "create.sh")
    assert gcloud_calls(env) == [
        ["compute", "tpus", "queued-resources", "create", "test-tpu", "--node-id=test-tpu", *GCLOUD_FLAGS,
         "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv6e"],
        QR_DESCRIBE]
    assert "test-tpu is ACTIVE after" in result.stdout


@pytest.mark.parametrize("queued", [False, True])
@pytest.mark.parametrize("capacity, flag", [("on-demand", []), ("spot", ["--spot"]), ("reserved", ["--reserved"])])
def test_create_capacity(env, queued, capacity, flag):
    run_script(env | {"QUEUED": "1" if queued else "0", "CAPACITY": capacity}, "create.sh")
    create = gcloud_calls(env)[0]
    if queued:
        assert create == ["compute", "tpus", "queued-resources", "create", "test-tpu", "--node-id=test-tpu",
                          *GCLOUD_FLAGS, "--accelerator-type=v5litepod-16", *flag,
                          "--runtime-version=v2-alpha-tpuv5-lite"]
    else:
        assert create == ["compute", "tpus", "tpu-vm", "create", "test-tpu", *GCLOUD_FLAGS,
                          "--accelerator-type=v5litepod-16", *flag, "--version=v2-alpha-tpuv5-lite"]


def test_create_queued_waits_until_active(env):
    result = run_script(env | {"QUEUED": "1", "FAKE_QUEUE_POLLS": "3"}, "create.sh")
    assert [step(c) for c in gcloud_calls(env)] == ["queued-resources create"] + ["queued-resources describe"] * 4
    assert all(c == QR_DESCRIBE for c in gcloud_calls(env)[1:])
    # Each new state once, not every poll.
    assert result.stdout.count("test-tpu is WAITING_FOR_RESOURCES after") == 1
    assert re.fullmatch(r"\S+ \S+ create\.sh: test-tpu is ACTIVE after \d+s\.", result.stdout.splitlines()[-1])


@pytest.mark.parametrize("end, says", [
    ("FAILED", f"FAILED ({fake_gcloud.QUOTA_ERROR})"),
    ("SUSPENDED", "is SUSPENDED: its capacity was taken back before it could be used"),
], ids=["FAILED", "SUSPENDED"])
def test_create_queued_stops_on_a_failed_request(env, end, says):
    result = run_script(env | {"QUEUED": "1", "FAKE_QUEUE_POLLS": "1", "FAKE_QUEUE_END": end}, "create.sh",
                        check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"create.sh: the queued resource test-tpu {says}; QUEUED=1 launch/delete.sh removes it"]
    calls = gcloud_calls(env)
    assert [step(c) for c in calls] == ["queued-resources create"] + ["queued-resources describe"] * (
        3 if end == "FAILED" else 2)
    if end == "FAILED":  # the reason comes from a second describe
        assert calls[-1][-1] == "--format=value(state.failedData.error.message)"


def test_create_queued_times_out(env):
    result = run_script(env | {"QUEUED": "1", "FAKE_QUEUE_POLLS": "5", "QUEUE_TIMEOUT": "0"}, "create.sh",
                        check=False)
    assert result.returncode == 1
    assert re.search(r"is still WAITING_FOR_RESOURCES after \d+s \(QUEUE_TIMEOUT\) and stays queued", result.stderr)
    assert [step(c) for c in gcloud_calls(env)] == ["queued-resources create", "queued-resources describe"]
    assert slice_state(env)["queued"] == "WAITING_FOR_RESOURCES"  # the request is left in the queue


@pytest.mark.parametrize("setting", [{"CAPACITY": "preemptible"}, {"QUEUE_TIMEOUT": "2h"}, {"POLL_SECONDS": "-1"}])
def test_create_bad_setting_requests_nothing(env, setting):
    result = run_script(env | {"QUEUED": "1"} | setting, "create.sh", check=False)
    assert result.returncode == 1 and next(iter(setting)) in result.stderr
    assert gcloud_calls(env) == []


def test_delete(env):
    set_slice(env, node="READY")
    run_script(env, "delete.sh")
    assert only_call(env) == ["compute", "tpus", "tpu-vm", "delete", "test-tpu", *GCLOUD_FLAGS, "--quiet"]


def test_delete_queued(env):
    set_slice(env, queued="ACTIVE", node="READY")
    run_script(env | {"QUEUED": "1"}, "delete.sh")
    assert only_call(env) == ["compute", "tpus", "queued-resources", "delete", "test-tpu", *GCLOUD_FLAGS,
                              "--quiet", "--force"]
    assert slice_state(env) == {"queued": None, "node": None}  # --force: its TPU goes with it


def test_no_project_flag_without_project(env):
    del env["PROJECT"]
    set_slice(env, node="READY")
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
                  ["dreamix_jax.edit", "--config", "configs/dreamix.py:video", "--workdir", f"{BUCKET}/edit",
                   "--config.distributed=true", PROMPT], None),
    "sweep.sh": (["shapes_edit:smoke", "--config.batch_size=4"],
                 ["dreamix_jax.sweep", "--config", "configs/sweeps/shapes_edit.py:smoke",
                  "--workdir", f"{BUCKET}/sweeps/shapes_edit-smoke", "--config.edit.distributed=true",
                  "--config.batch_size=4"], None),
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
    run_script(env, "finetune.sh", "base")
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


@pytest.mark.parametrize("script", ["run.sh", "finetune.sh", "sample.sh", "sweep.sh", "supervise.sh"])
def test_missing_argument_is_a_usage_error(env, script):
    result = run_script(env, script, check=False)
    assert result.returncode != 0 and "usage:" in result.stderr
    assert gcloud_calls(env) == []


# ------------------------------------------------------------------------------------------------
# Supervising a run through preemptions.
# ------------------------------------------------------------------------------------------------

SETUP = ["setup: move aside", "setup: copy", "setup: install"]
TRAIN_ARGS = ["base", "--config.batch_size=64", PROMPT]


@pytest.fixture
def worker(env, tmp_path):
    """Makes the fake gcloud run workers' commands here, in a worker home that a deleted slice
    loses, with a shared WORKDIR_ROOT that it keeps (a mounted bucket). The fake `python3` trains
    from the workdir's checkpoint (0 without one) and ends each run as tmp_path/plan lists, one
    entry a run: "preempt:STATUS" saves step+5, preempts the slice and exits with STATUS (0: stopped
    cleanly on the preemption notice), "fail:STATUS" exits with STATUS, "deny:STATUS" also makes
    every later describe fail with PERMISSION_DENIED, "finish" (also when the plan is used up) saves
    step 10. Each run appends the step it started from to runs.log."""
    bin_dir = tmp_path / "worker_bin"
    bin_dir.mkdir()
    for name in ["pkill", "pgrep"]:  # "no such process": nothing on this machine is signalled
        _write_exe(bin_dir / name, "#!/bin/sh\nexit 1\n")
    # The workers' own gcloud, which copies a workdir to the bucket, must not be this machine's.
    _write_exe(bin_dir / "gcloud", f"#!/bin/sh\necho \"$@\" >> {tmp_path}/upload.log\n")
    _write_exe(bin_dir / "python3", f"""#!{sys.executable}
import json, pathlib, sys
args = sys.argv[1:]
if args[:2] == ["-m", "pip"]:
    sys.exit(0)
workdir = pathlib.Path(args[args.index("--workdir") + 1])
workdir.mkdir(parents=True, exist_ok=True)
checkpoint = workdir / "checkpoint"
start = int(checkpoint.read_text()) if checkpoint.exists() else 0
with open(workdir / "runs.log", "a") as f:
    f.write(f"{{start}}\\n")
plan_file = pathlib.Path({str(tmp_path / "plan")!r})
plan = json.loads(plan_file.read_text()) if plan_file.exists() else []
outcome, _, status = (plan.pop(0) if plan else "finish").partition(":")
plan_file.write_text(json.dumps(plan))
state_file = pathlib.Path({env["FAKE_GCLOUD_STATE"]!r})
state = json.loads(state_file.read_text())
if outcome == "finish":
    checkpoint.write_text("10")
elif outcome == "preempt":
    checkpoint.write_text(str(start + 5))
    state["node"] = "PREEMPTED"
    if state["queued"]:
        state["queued"] = "SUSPENDED"
elif outcome == "deny":
    state["deny"] = "describe"
state_file.write_text(json.dumps(state))
sys.exit(int(status or 0))
""")
    home = tmp_path / "worker_home"
    (home / "dreamix_jax").mkdir(parents=True)  # setup.sh has run
    env.update(FAKE_WORKER_HOME=str(home), FAKE_WORKER_PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
               WORKDIR_ROOT=str(tmp_path / "shared"))
    return tmp_path / "shared" / "train" / "base"


def plan(env, *outcomes):
    pathlib.Path(env["FAKE_GCLOUD_STATE"]).with_name("plan").write_text(json.dumps(outcomes))


def supervise(env, *args, check=True):
    return run_script(env, "supervise.sh", *args, check=check)


def supervise_queued_finetune(env, *outcomes, **settings):
    """`supervise.sh finetune.sh base` on a healthy queued slice whose runs end as `outcomes`."""
    env |= {"QUEUED": "1", **settings}
    set_slice(env, queued="ACTIVE", node="READY")
    plan(env, *outcomes)
    return supervise(env, "finetune.sh", "base", check=False)


@pytest.mark.parametrize("queued, status", [(True, 255), (True, 0), (False, 255)],
                         ids=["queued", "queued-clean-exit", "tpu-vm"])
def test_supervise_recovers_from_a_preemption(env, worker, queued, status):
    """The first run is preempted: the slice is deleted, created again (spot), set up again, and
    the identical command resumes from the first run's checkpoint."""
    env |= {"CAPACITY": "spot", "QUEUED": "1" if queued else "0", "FAKE_QUEUE_POLLS": "1"}
    set_slice(env, queued="ACTIVE" if queued else None, node="READY")
    plan(env, f"preempt:{status}")
    result = supervise(env, "finetune.sh", *TRAIN_ARGS)

    calls = gcloud_calls(env)
    create = next(c for c in calls if c[3] == "create")
    if queued:
        check = ["queued-resources describe", "tpu-vm describe"]
        recreate = ["queued-resources delete", "queued-resources create", *["queued-resources describe"] * 2]
        assert create == ["compute", "tpus", "queued-resources", "create", "test-tpu", "--node-id=test-tpu",
                          *GCLOUD_FLAGS, "--accelerator-type=v5litepod-16", "--spot",
                          "--runtime-version=v2-alpha-tpuv5-lite"]
    else:
        check = ["tpu-vm describe"]
        recreate = ["tpu-vm delete", "tpu-vm create"]
        assert create == ["compute", "tpus", "tpu-vm", "create", "test-tpu", *GCLOUD_FLAGS,
                          "--accelerator-type=v5litepod-16", "--spot", "--version=v2-alpha-tpuv5-lite"]
    # A preempted queued resource is seen from its own state, without asking about its TPU.
    assert [step(c) for c in calls] == [*check, "run", check[0], *recreate, *SETUP, "run", *check]
    first, second = [c for c in calls if step(c) == "run"]
    assert first == second
    program, upload = program_and_upload(ssh_command(first))
    assert program[program.index("--workdir") + 1] == str(worker) and upload is None
    # The second run started from the first one's checkpoint and finished.
    assert (worker / "runs.log").read_text() == "0\n5\n" and (worker / "checkpoint").read_text() == "10"
    assert slice_state(env)["node"] == "READY"

    out = result.stdout
    problem = "its queued resource is SUSPENDED" if queued else "the TPU is PREEMPTED"
    if status == 0:
        seen = f"finetune.sh exited 0, but test-tpu was preempted ({problem}): a preemption notice may have stopped it"
    else:
        seen = f"finetune.sh failed with exit code 255: test-tpu was preempted or lost a worker ({problem})."
    lines = [
        f"attempt 1/4: finetune.sh {' '.join(TRAIN_ARGS)}",
        seen,
        "recreating test-tpu for attempt 2/4: the same command, with the same workdir.",
        "setting up test-tpu again.",
        f"attempt 2/4: finetune.sh {' '.join(TRAIN_ARGS)}",
        "finetune.sh succeeded on attempt 2/4.",
    ]
    positions = [out.find(f"supervise.sh: {line}") for line in lines]
    assert -1 not in positions and positions == sorted(positions), out
    assert "after a preemption it starts over" not in out  # the workdir is shared: no warning


def test_supervise_stops_at_once_on_a_failure_that_is_not_a_preemption(env, worker):
    result = supervise_queued_finetune(env, "fail:3")
    assert result.returncode == 3
    calls = gcloud_calls(env)
    assert [step(c) for c in calls] == ["queued-resources describe", "tpu-vm describe", "run",
                                        "queued-resources describe", "tpu-vm describe"]
    assert calls[-2:] == [QR_DESCRIBE, NODE_DESCRIBE]  # both healthy: ACTIVE and READY
    [message] = result.stderr.splitlines()
    assert message.endswith("supervise.sh: finetune.sh failed with exit code 3 on a healthy test-tpu: not a "
                            "preemption, so it is not rerun (the workers' logs/ say why).")
    assert "attempt 2/" not in result.stdout and (worker / "runs.log").read_text() == "0\n"


@pytest.mark.parametrize("max_restarts", [0, 2])
def test_supervise_honours_max_restarts(env, worker, max_restarts):
    result = supervise_queued_finetune(env, *["preempt:255"] * 5, MAX_RESTARTS=str(max_restarts))
    assert result.returncode == 255
    steps = [step(c) for c in gcloud_calls(env)]
    assert steps.count("run") == max_restarts + 1
    assert steps.count("queued-resources create") == steps.count("queued-resources delete") == max_restarts
    assert steps[-2:] == ["run", "queued-resources describe"]  # nothing is recreated after the last run
    for attempt in range(1, max_restarts + 2):
        assert f"supervise.sh: attempt {attempt}/{max_restarts + 1}: finetune.sh base" in result.stdout
    assert result.stderr.splitlines()[-1].endswith(
        f"supervise.sh: giving up after {max_restarts} restarts (MAX_RESTARTS); once test-tpu is back, the same "
        "command resumes.")
    assert (worker / "runs.log").read_text() == "".join(f"{5 * i}\n" for i in range(max_restarts + 1))


def test_supervise_stops_when_the_slice_cannot_be_recreated(env, worker):
    result = supervise_queued_finetune(env, "preempt:255", FAKE_QUEUE_END="FAILED")
    assert result.returncode == 1
    # The request FAILED (a describe for its state, one for the reason): no setup, no second run.
    assert [step(c) for c in gcloud_calls(env)] == [
        "queued-resources describe", "tpu-vm describe", "run", "queued-resources describe",
        "queued-resources delete", "queued-resources create", *["queued-resources describe"] * 2]
    assert fake_gcloud.QUOTA_ERROR in result.stderr
    assert result.stderr.splitlines()[-1].endswith("supervise.sh: could not create test-tpu again (see above); "
                                                   "once it is back, the same command resumes.")


def test_supervise_never_deletes_a_slice_it_cannot_see(env, worker):
    """A describe that fails other than with NOT_FOUND stops the supervisor: the slice may be fine."""
    result = supervise_queued_finetune(env, "deny:255")
    assert result.returncode == 1
    assert [step(c) for c in gcloud_calls(env)] == ["queued-resources describe", "tpu-vm describe", "run",
                                                    "queued-resources describe"]
    assert "PERMISSION_DENIED" in result.stderr
    assert result.stderr.splitlines()[-1] == "supervise.sh: could not describe test-tpu (gcloud's error is above)"
    assert slice_state(env)["queued"] == "ACTIVE"


@pytest.mark.parametrize("script, on_workers", [("finetune.sh", True), ("sample.sh", False), ("sweep.sh", False)])
def test_supervise_warns_about_a_workdir_on_the_workers(env, worker, tmp_path, script, on_workers):
    """finetune.sh without WORKDIR_ROOT writes on the workers and copies to the bucket; sample.sh and
    sweep.sh write in the bucket, which a recreated slice still sees."""
    del env["WORKDIR_ROOT"]
    set_slice(env, node="READY")
    result = supervise(env, script, {"sample.sh": "video", "sweep.sh": "shapes_edit"}.get(script, "base"))
    uploaded = tmp_path / "upload.log"
    note = (f"supervise.sh: note: {script} writes its workdir on the workers' disks, which a recreated slice "
            "does not have: after a preemption it starts over.")
    if on_workers:
        assert uploaded.read_text().startswith("storage rsync --recursive outputs/") and note in result.stdout
    else:
        assert not uploaded.exists() and "note:" not in result.stdout


@pytest.mark.parametrize("setting, says", [
    ({}, "test-tpu cannot run finetune.sh, the TPU is MISSING: create it with launch/create.sh"),
    ({"QUEUED": "1"}, "test-tpu cannot run finetune.sh, its queued resource is MISSING"),
    ({"DETACH": "1"}, "DETACH=1"),
    ({"MAX_RESTARTS": "many"}, "MAX_RESTARTS must be a whole number"),
])
def test_supervise_refuses_to_start(env, setting, says):
    result = supervise(env | setting, "finetune.sh", "base", check=False)
    assert result.returncode == 1 and says in result.stderr
    assert not any(step(c).endswith(("create", "delete")) or step(c) == "run" for c in gcloud_calls(env))


def test_supervise_only_runs_the_wrappers(env):
    result = supervise(env, "run.sh", "dreamix_jax.train", check=False)
    assert result.returncode == 2 and "usage:" in result.stderr and gcloud_calls(env) == []


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
