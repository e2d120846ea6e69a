"""What every command line (train, edit, sweep, demo) shares.

- Messages of this package reach the terminal at INFO; the libraries' (Orbax, absl) only from WARNING.
- `--config configs/<x>.py` is found from any folder: a path that does not exist where the command
  runs is looked up in the installed `configs` package.
- An error this project raises on purpose (a bad setting, input, file or workdir; a non-finite
  loss) ends the program with its one sentence and exit code 1; anything else is a bug and keeps
  its traceback. A bad `--config.<key>` override is such an error too.
- Compiled programs are kept in a persistent cache (`dreamix_jax.compile_cache`: a user cache
  folder; `DREAMIX_COMPILATION_CACHE=0` turns it off), so a second run compiles little.
- The workdir is locked for the whole run (`dreamix_jax.workdir.lock`), except on multi-host runs.
- Ctrl-C ends the program with exit code 130 and a sentence, without tearing down XLA's threads
  (training's loop first saves a checkpoint).
"""

import contextlib
import functools
import logging
import os
import pathlib
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

import configs
import dreamix_jax
from dreamix_jax import compile_cache
from dreamix_jax import workdir as workdir_lib

log = logging.getLogger(__name__)

CONFIGS_DIR = pathlib.Path(configs.__file__).parent
_OURS = (pathlib.Path(dreamix_jax.__file__).parent, CONFIGS_DIR)
# The kinds of error this project raises with a sentence meant for the user.
_EXPECTED = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError, workdir_lib.WorkdirBusy)


def setup_logging() -> None:
    """INFO and above from this package on stderr; libraries stay at WARNING."""
    # A module run as `python -m dreamix_jax.<x>` logs as `__main__`, outside the package's logger.
    for name in (dreamix_jax.__name__, "__main__"):
        logger = logging.getLogger(name)
        if not any(getattr(h, "_dreamix", False) for h in logger.handlers):
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            handler._dreamix = True
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # absl's root handler would print every message a second time
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax reports every file it writes at INFO


def is_expected(error: BaseException) -> bool:
    """Whether `error` was raised on purpose by this project (or its configs), with a sentence."""
    if not isinstance(error, _EXPECTED):
        return False
    tb, last = error.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    filename = pathlib.Path(last.tb_frame.f_code.co_filename).resolve()
    return any(filename.is_relative_to(root.resolve()) for root in _OURS)


def sentence(error: BaseException) -> str:
    """The error's message as one line."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


def find_config(argv: Sequence[str]) -> list[str]:
    """`argv` with a `--config` file that does not exist here replaced by the installed one."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = _installed_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + _installed_config(arg.split("=", 1)[1])
    return out


def _installed_config(spec: str) -> str:
    path, colon, arg = spec.partition(":")
    if pathlib.Path(path).exists():
        return spec
    relative = pathlib.PurePath(path).parts
    if relative and relative[0] == CONFIGS_DIR.name:
        relative = relative[1:]
    candidate = CONFIGS_DIR.joinpath(*relative)
    return str(candidate) + colon + arg if candidate.is_file() else spec


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad config file or `--config.<key>` override as one sentence."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = sentence(error)
        # A config file's own error reaches here as a flattened traceback: keep its last sentence.
        raised = re.findall(r"\b\w+Error: (.*?)(?= \(--helpshort|$)", message.split("Traceback")[-1])
        if "Traceback" in message and raised:
            raise SystemExit(f"error: {raised[-1]}") from None
        raise SystemExit(f"error: {message} (--helpshort lists the flags).") from None
    except (AttributeError, KeyError, TypeError, ValueError, FileNotFoundError) as error:
        overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
        key = re.sub(r"\W", "", sentence(error).split()[-1]) if isinstance(error, (AttributeError, KeyError)) else ""
        named = [o for o in overrides if key and o.split(".")[-1] == key]
        if named:
            raise SystemExit(f"error: Unknown setting {named[0]}: the config has no key {key!r}; check its name "
                             "in the config file.") from None
        raise SystemExit(f"error: The config could not be read ({sentence(error)}); check --config and every "
                         "--config.<key>=<value>.") from None


def run_app(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)` with the config found from any folder and flag errors as sentences."""
    app.run(main, argv=find_config(sys.argv), flags_parser=parse_flags)


def flag_values(example: str) -> tuple[Any, str]:
    """(--config, --workdir), both required; `example` names a config for the usage error."""
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    if config is None or not workdir:
        raise app.UsageError(f"Give --config (e.g. {example}) and --workdir.")
    return config, workdir


def run(run_fn: Callable[[Any, str], Any], config: Any, workdir: str, *, purpose: str) -> Any:
    """`run_fn(config, workdir)` under the workdir lock; expected errors and Ctrl-C end the
    program with a sentence."""
    setup_logging()
    compile_cache.enable()
    previous = signal.signal(signal.SIGINT, functools.partial(_interrupted, workdir))
    try:
        # Every host of a multi-host run runs the same command on the same workdir: not locked.
        with (contextlib.nullcontext() if config is not None and config.get("distributed") else
              workdir_lib.lock(workdir, purpose)) as held:
            if held is not None and held.note:
                log.info("%s: %s.", workdir, held.note)
            return run_fn(config, workdir)
    except Exception as error:
        if is_expected(error):
            raise SystemExit(f"error: {sentence(error)}") from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted(workdir: str, signum, frame) -> None:
    """Ctrl-C: leave at once. A KeyboardInterrupt can land in a garbage-collection callback (and be
    ignored) or in interpreter teardown while XLA's threads run (and crash); every store is written
    atomically, so stopping here loses only the work in progress. Training installs its own handler
    for its loop (checkpoint, then stop)."""
    del signum, frame
    sys.stdout.flush()
    sys.stderr.write(f"\nerror: Interrupted. What was finished is kept in {workdir}; run the same command "
                     "again to go on.\n")
    sys.stderr.flush()
    os._exit(130)
