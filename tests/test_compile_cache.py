"""The persistent compilation cache every command line turns on (`dreamix_jax.compile_cache`).

`enable()` changes process-wide JAX settings, so it runs in child processes here (a tiny jitted
function each, no model compiles); the in-process tests only read settings.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from dreamix_jax import compile_cache

REPO = pathlib.Path(__file__).resolve().parents[1]

# Enables the cache, compiles one tiny function and reports what the cache did.
CHILD = """
import json, pathlib
import jax, jax.numpy as jnp
from jax import monitoring
from dreamix_jax import compile_cache

hits = []
monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("/cache_hits") else None)
folder = compile_cache.enable()
x = jax.jit(lambda v: jnp.sin(v) * 2.0 + 1.0)(jnp.arange(7.0))
x.block_until_ready()
print(json.dumps(dict(folder=folder, config=jax.config.jax_compilation_cache_dir, hits=len(hits),
                      entries=sorted(p.name for p in pathlib.Path(folder).iterdir()) if folder else [])))
"""


def run_child(tmp_path: pathlib.Path, **env: str) -> dict:
    """CHILD's report, run with this environment (home and XDG cache moved under `tmp_path`)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("JAX_COMPILATION_CACHE_DIR", compile_cache.ENV, "XDG_CACHE_HOME")}
    base.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO), **env)
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=base, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_folder_rules(monkeypatch, tmp_path):
    """The env var's path wins; 0/off/empty disable; otherwise XDG_CACHE_HOME, then ~/.cache."""
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))
    assert compile_cache.chosen_dir() == tmp_path / "mine"
    for off in ("0", "off", "", " OFF "):
        monkeypatch.setenv(compile_cache.ENV, off)
        assert compile_cache.chosen_dir() is None
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.chosen_dir() == tmp_path / "xdg" / "dreamix_jax" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.chosen_dir() == tmp_path / "home" / ".cache" / "dreamix_jax" / "xla"


def test_a_configured_folder_is_kept():
    """The test session configured JAX's cache itself (conftest): enable() leaves every setting alone."""
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    assert before[0]
    assert compile_cache.enable() == before[0]
    assert (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs) == before


def test_second_process_reads_the_cache(tmp_path):
    """The first run fills the env var's folder; a second run of the same program hits it and adds nothing."""
    folder = tmp_path / "cache"
    first = run_child(tmp_path, **{compile_cache.ENV: str(folder)})
    assert first["folder"] == first["config"] == str(folder)
    assert first["entries"] and first["hits"] == 0
    second = run_child(tmp_path, **{compile_cache.ENV: str(folder)})
    assert second["hits"] >= 1
    assert second["entries"] == first["entries"]


@pytest.mark.parametrize("setting", ["default", "disabled", "jax_env"])
def test_enable_in_a_fresh_process(tmp_path, setting):
    """Default folder under XDG_CACHE_HOME; DREAMIX_COMPILATION_CACHE=0 turns it off; JAX's own setting wins."""
    if setting == "default":
        report = run_child(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
        assert report["folder"] == str(tmp_path / "xdg" / "dreamix_jax" / "xla") == report["config"]
        assert report["entries"]
    elif setting == "disabled":
        report = run_child(tmp_path, **{compile_cache.ENV: "0"})
        assert report["folder"] is None and report["config"] is None
        assert not (tmp_path / "home" / ".cache").exists()
    else:
        report = run_child(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"),
                           **{compile_cache.ENV: str(tmp_path / "ours")})
        assert report["folder"] == report["config"] == str(tmp_path / "jax")
        assert not (tmp_path / "ours").exists()
