"""A fake `gcloud` for tests/test_launch.py: it records its argv and keeps a small model of one slice.

Every call appends its argv, as a JSON line, to $FAKE_GCLOUD_LOG. The model lives in the JSON file
$FAKE_GCLOUD_STATE: {"queued": state or null, "node": state or null, "polls": n, "deny": verb}, null
meaning that the queued resource or TPU does not exist (no file: neither does).

- `queued-resources create` queues the request (WAITING_FOR_RESOURCES); after $FAKE_QUEUE_POLLS
  further describes [0] it becomes $FAKE_QUEUE_END [ACTIVE], with its TPU READY when ACTIVE.
- `tpu-vm create` makes a READY TPU; both creates fail when the resource already exists.
- `describe --format=value(FIELD)` prints the state (or a FAILED request's error message), and
  fails with NOT_FOUND for a missing resource, as gcloud does.
- `delete` removes the resource (a queued resource's TPU with it) and wipes the workers' disk.
- With $FAKE_WORKER_HOME set, `tpu-vm ssh --command=C` runs C here with bash, as on a worker whose
  home is that folder and whose PATH is $FAKE_WORKER_PATH, and exits with C's status (gcloud
  passes on a worker's nonzero status); `tpu-vm scp` makes the target folder there (copying
  nothing). Without it, ssh and scp only succeed.
- Calls whose verb is the model's "deny" fail with PERMISSION_DENIED: an error other than NOT_FOUND.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

NOT_FOUND = "ERROR: (gcloud.compute.tpus.{}.{}) NOT_FOUND: Resource '{}' was not found"
QUOTA_ERROR = "Quota exceeded for TPUV5sLitepodServingPerProjectPerZone"


def main(argv):
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
        f.write(json.dumps(argv) + "\n")
    state_path = pathlib.Path(os.environ["FAKE_GCLOUD_STATE"])
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    state.setdefault("queued", None)
    state.setdefault("node", None)
    home = os.environ.get("FAKE_WORKER_HOME")

    assert argv[:2] == ["compute", "tpus"], argv
    kind, verb, name = argv[2:5]
    key = {"queued-resources": "queued", "tpu-vm": "node"}[kind]
    if verb == state.get("deny"):
        print(f"ERROR: (gcloud.compute.tpus.{kind}.{verb}) PERMISSION_DENIED: no access to {name}", file=sys.stderr)
        return 1
    if verb == "create":
        if state[key] is not None:
            print(f"ERROR: (gcloud.compute.tpus.{kind}.create) ALREADY_EXISTS: {name}", file=sys.stderr)
            return 1
        if kind == "queued-resources":
            state.update(queued="WAITING_FOR_RESOURCES", polls=int(os.environ.get("FAKE_QUEUE_POLLS", "0")))
        else:
            state["node"] = "READY"
    elif verb == "describe":
        if state[key] is None:
            print(NOT_FOUND.format(kind, verb, name), file=sys.stderr)
            return 1
        if key == "queued" and state["queued"] == "WAITING_FOR_RESOURCES":
            if state["polls"] > 0:
                state["polls"] -= 1
            else:
                state["queued"] = os.environ.get("FAKE_QUEUE_END", "ACTIVE")
                if state["queued"] == "ACTIVE":
                    state["node"] = "READY"
        field = next(a for a in argv if a.startswith("--format=")).removeprefix("--format=")
        print({"value(state.state)": state["queued"], "value(state)": state["node"],
               "value(state.failedData.error.message)": QUOTA_ERROR if state["queued"] == "FAILED" else ""}[field])
    elif verb == "delete":
        if state[key] is None:
            print(NOT_FOUND.format(kind, verb, name), file=sys.stderr)
            return 1
        state[key] = None
        if kind == "queued-resources":
            assert "--force" in argv, "a queued resource with a TPU is deleted only with --force"
            state["node"] = None
        if home:  # a new slice has new disks
            shutil.rmtree(home)
            os.mkdir(home)
    elif verb == "scp" and home:
        target = argv[6].split(":", 1)[1]
        pathlib.Path(home, target.removeprefix("~/")).mkdir(parents=True, exist_ok=True)
    elif verb == "ssh" and home:
        command = next(a for a in argv if a.startswith("--command=")).removeprefix("--command=")
        state_path.write_text(json.dumps(state))  # the command may change it (a preemption)
        return subprocess.run(["bash", "-c", command], env={"PATH": os.environ["FAKE_WORKER_PATH"], "HOME": home},
                              timeout=60).returncode
    state_path.write_text(json.dumps(state))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
