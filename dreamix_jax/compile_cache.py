"""The persistent XLA compilation cache every command line turns on.

A second run of any command reads its compiled programs from disk instead of compiling them
again (on a 2-core host, most of a short run is compiling). The cache lives in

1. `$DREAMIX_COMPILATION_CACHE`, if set; `0`, `off`, `false`, `no` or an empty value disable it;
2. otherwise `$XDG_CACHE_HOME/dreamix_jax/xla`, or `~/.cache/dreamix_jax/xla` without XDG_CACHE_HOME.

A cache folder configured through JAX itself (`JAX_COMPILATION_CACHE_DIR` or
`jax.config.update("jax_compilation_cache_dir", ...)`) wins and is left as it is. The cache is
trusted code: keep it in a folder only you can write to.
"""

import logging
import os
import pathlib

import jax

log = logging.getLogger(__name__)

ENV = "DREAMIX_COMPILATION_CACHE"
_OFF = ("", "0", "off", "false", "no")


def user_cache_dir() -> pathlib.Path:
    """This package's user cache folder: `$XDG_CACHE_HOME/dreamix_jax`, else `~/.cache/dreamix_jax`."""
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "dreamix_jax"


def default_dir() -> pathlib.Path:
    """The compilation cache's default folder: `user_cache_dir() / "xla"`."""
    return user_cache_dir() / "xla"


def chosen_dir() -> pathlib.Path | None:
    """Where the cache goes by this package's rules (None: disabled by `$DREAMIX_COMPILATION_CACHE`)."""
    value = os.environ.get(ENV)
    if value is None:
        return default_dir()
    if value.strip().lower() in _OFF:
        return None
    return pathlib.Path(value).expanduser()


def enable() -> str | None:
    """Point JAX's persistent compilation cache at `chosen_dir()`; returns the folder in use (None: off)."""
    configured = jax.config.jax_compilation_cache_dir
    if configured:  # the user's own JAX setting
        return configured
    folder = chosen_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only home must not stop the program: it only compiles more
        log.warning("No compilation cache: cannot create %s (%s); set %s to another folder or 0.", folder, error, ENV)
        return None
    # Every program is worth keeping: the small ones add up to most of a cold start on few cores.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return str(folder)
