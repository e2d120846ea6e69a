r"""Cold and warm start of the demo: wall time per phase, and XLA compiles and seconds per program.

Runs the demo (`python -m dreamix_jax.demo`) in fresh processes, cold and warm each with a fresh
workdir (so it finetunes again and encodes its prompts again):

- cold: an empty compilation cache folder (`$DREAMIX_COMPILATION_CACHE` pointed at `<workdir>/xla_cache`);
- warm: the folder the cold run filled;
- again: the same command once more on the run before's workdir, as a user's second run is: it
  reuses the stored finetune and the cached programs.

Inside each run, JAX's monitoring events give every backend compile (program name, seconds,
persistent-cache hit or not, cache key) and the seconds spent tracing and lowering each program;
the demo's phases (loading, prompt encoding, finetuning and sampling each stage) are timed by
wrapping the functions that do them. A cache key compiled twice in one run is a program compiled
twice. XLA's "Constant folding an instruction is taking" warnings are counted in each run's stderr
(kept in `<workdir>/<run>.stderr.log`). Prints the tables and writes JSON.

  python benchmarks/cold_start.py --workdir /tmp/cold_start     # table + benchmarks/results/cold_start.json
  python benchmarks/cold_start.py --workdir /tmp/cold_start --runs warm   # reuse the cache already there
"""

import argparse
import collections
import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from results_io import write_json  # noqa: E402

RUNS = ("cold", "warm", "again")
TOP_PROGRAMS = 20  # rows of the program table
FOLDING_WARNING = "Constant folding an instruction is taking"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
PREPARE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_seconds",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_seconds"}


# ------------------------------------------------------------------------------------------------
# Inside a run (the child process).
# ------------------------------------------------------------------------------------------------


def program_name(fun_name: str) -> str:
    """'jit(f)' → 'f': the trace event names a function plainly, the others wrap it."""
    return fun_name[4:-1] if fun_name.startswith("jit(") and fun_name.endswith(")") else fun_name


class PhaseClock:
    """Wall-time windows of the demo's phases, and the phase running at any moment."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: list[dict[str, Any]] = []
        self._open: list[str] = []

    @property
    def current(self) -> str:
        return self._open[-1] if self._open else "other"

    def now(self) -> float:
        return time.perf_counter() - self.start

    @contextlib.contextmanager
    def phase(self, label: str):
        """Time a phase; compiles inside it are attributed to it."""
        begin = self.now()
        self._open.append(label)
        try:
            yield
        finally:
            self._open.pop()
            self.phases.append(dict(phase=label, start=round(begin, 3), seconds=round(self.now() - begin, 3)))

    def wrap(self, owner: Any, attribute: str, label: Callable[..., str], wait: bool = False) -> None:
        """Replace `owner.attribute` by a version timed as phase `label(*args)`; `wait` blocks on its result,
        so the phase holds its asynchronous device work too."""
        import jax

        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with self.phase(label(*args, **kwargs)):
                result = original(*args, **kwargs)
                return jax.block_until_ready(result) if wait else result

        setattr(owner, attribute, timed)


class CompileRecorder:
    """Every backend compile (name, seconds, phase, persistent-cache hit, key) and per-program trace/lower time."""

    def __init__(self, clock: PhaseClock) -> None:
        self.clock = clock
        self.compiles: list[dict[str, Any]] = []
        self.prepare: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
        self._lookup = threading.local()  # the cache lookup of the compile in flight on this thread

    def install(self) -> None:
        """Listen to JAX's compile events and to the compiler's (debug-level) cache hit/miss messages."""
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(self._on_duration)
        compiler_log = logging.getLogger("jax._src.compiler")
        compiler_log.setLevel(logging.DEBUG)
        compiler_log.addFilter(self._on_log)

    def _on_log(self, record: logging.LogRecord) -> bool:
        """Note the cache lookup the next compile event of this thread belongs to; hide debug messages."""
        message = str(record.msg)
        if "compilation cache hit" in message or "COMPILATION CACHE MISS" in message:
            self._lookup.value = ("hit" in message, str(record.args[1]))
        return record.levelno >= logging.WARNING

    def _on_duration(self, event: str, seconds: float, **kwargs: Any) -> None:
        name = program_name(str(kwargs.get("fun_name", "?")))
        if event in PREPARE_EVENTS:
            self.prepare[name][PREPARE_EVENTS[event]] += seconds
        elif event == COMPILE_EVENT:
            hit, key = getattr(self._lookup, "value", None) or (False, None)
            self._lookup.value = None
            self.compiles.append(dict(program=name, seconds=round(seconds, 4), hit=hit, key=key,
                                      phase=self.clock.current, at=round(self.clock.now(), 3)))


def child(workdir: str, report: str) -> None:
    """Run the demo once with its phases and compiles recorded; write the record to `report`."""
    clock = PhaseClock()
    recorder = CompileRecorder(clock)
    with clock.phase("imports"):
        import jax
        from absl import flags

        from dreamix_jax import cascade, demo, dreamix, pretrained, text
    recorder.install()
    clock.wrap(pretrained, "load", lambda *a, **k: "load")
    clock.wrap(text.TextEncoder, "__call__", lambda *a, **k: "encode prompts", wait=True)
    clock.wrap(dreamix, "finetune_stage", lambda unet, stage, *a, **k: f"finetune {stage.name}", wait=True)
    clock.wrap(cascade, "sample_stage", lambda model, stage, *a, **k: f"sample {stage.name}", wait=True)
    flags.FLAGS(["demo", f"--workdir={workdir}"])
    start = clock.now()
    demo.main([])
    write_json(report, dict(demo_seconds=round(clock.now() - start, 3), phases=clock.phases, compiles=recorder.compiles,
                            prepare={k: dict(v) for k, v in recorder.prepare.items()},
                            cache_dir=jax.config.jax_compilation_cache_dir))


# ------------------------------------------------------------------------------------------------
# The runs (the parent process).
# ------------------------------------------------------------------------------------------------


def launch(name: str, root: pathlib.Path, cache: pathlib.Path, workdir: pathlib.Path) -> dict[str, Any]:
    """One demo run in a fresh process; its record with the process wall time. `again` keeps `workdir`."""
    report, log_path = root / f"{name}.json", root / f"{name}.stderr.log"
    if name != "again":
        shutil.rmtree(workdir, ignore_errors=True)
    env = dict(os.environ, DREAMIX_COMPILATION_CACHE=str(cache),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # it would win over the folder this benchmark manages
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log_path, "w") as stderr:
        done = subprocess.run([sys.executable, __file__, "--child", str(report), "--workdir", str(workdir)],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"The {name} run failed with exit code {done.returncode}; see {log_path}.")
    record = json.loads(report.read_text())
    record.update(process_seconds=round(seconds, 2), load_before=load, load_after=os.getloadavg()[0],
                  folding_warnings=log_path.read_text(errors="replace").count(FOLDING_WARNING),
                  cache_entries=len(list(cache.iterdir())) if cache.is_dir() else 0)
    return summarise(record)


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    """Per phase and per program: compiles, compile seconds and cache hits; keys compiled twice."""
    compiles = record["compiles"]
    misses = [c for c in compiles if not c["hit"]]
    keys = collections.Counter(c["key"] for c in misses if c["key"])
    record["compiled_twice"] = sorted({c["program"] for c in misses if keys[c["key"]] > 1})
    record["by_phase"] = _totals(compiles, "phase")
    record["by_program"] = _totals(compiles, "program")
    for name, extra in record["prepare"].items():  # programs traced and lowered, compiled or not
        record["by_program"].setdefault(name, _empty()).update({k: round(v, 3) for k, v in extra.items()})
    record["totals"] = dict(compiles=len(misses), compile_seconds=round(sum(c["seconds"] for c in misses), 2),
                            hits=len(compiles) - len(misses),
                            hit_seconds=round(sum(c["seconds"] for c in compiles if c["hit"]), 2),
                            trace_lower_seconds=round(sum(sum(v.values()) for v in record["prepare"].values()), 2))
    return record


def _empty() -> dict[str, Any]:
    return dict(compiles=0, compile_seconds=0.0, hits=0, hit_seconds=0.0)


def _totals(compiles: list[dict[str, Any]], by: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in compiles:
        row = out.setdefault(c[by], _empty())
        kind = "hit" if c["hit"] else "compile"
        row["hits" if c["hit"] else "compiles"] += 1
        row[f"{kind}_seconds"] = round(row[f"{kind}_seconds"] + c["seconds"], 4)
    return out


# ------------------------------------------------------------------------------------------------
# Report.
# ------------------------------------------------------------------------------------------------


def phase_rows(record: dict[str, Any]) -> dict[str, float]:
    """Wall seconds per phase, the rest of the demo as 'other' and the whole process (with interpreter start)."""
    seconds: dict[str, float] = {}
    for p in sorted(record["phases"], key=lambda p: p["start"]):
        seconds[p["phase"]] = seconds.get(p["phase"], 0.0) + p["seconds"]
    seconds["other"] = record["demo_seconds"] - sum(v for k, v in seconds.items() if k != "imports")
    seconds["whole process"] = record["process_seconds"]
    return seconds


def print_tables(records: dict[str, dict[str, Any]]) -> None:
    """Phase table, program table (the costliest by compile seconds of the first run) and a line per run."""
    names = list(records)
    head = "".join(f" | {n + ' s':>9} {'compiles':>8} {'comp. s':>7} {'hits':>4}" for n in names)
    print(f"{'phase':<16}{head}")
    phases = list(dict.fromkeys(k for r in records.values() for k in phase_rows(r)))
    for phase in phases:
        cells = ""
        for n in names:
            wall = phase_rows(records[n]).get(phase)
            row = records[n]["by_phase"].get(phase, _empty())
            shown = phase != "whole process"
            counts = (row["compiles"], f"{row['compile_seconds']:.1f}", row["hits"]) if shown else ("", "", "")
            wall = float("nan") if wall is None else wall
            cells += f" | {wall:>9.1f} {counts[0]:>8} {counts[1]:>7} {counts[2]:>4}"
        print(f"{phase:<16}{cells}")
    print()
    first = records[names[0]]["by_program"]
    programs = sorted({p for r in records.values() for p in r["by_program"]},
                      key=lambda p: -first.get(p, {}).get("compile_seconds", 0.0))
    head = "".join(f" | {n + ' n':>7} {'comp. s':>7} {'hits':>4} {'trace+lower s':>13}" for n in names)
    print(f"{'program':<28}{head}")
    for program in programs[:TOP_PROGRAMS]:
        cells = ""
        for n in names:
            row = records[n]["by_program"].get(program, {})
            prep = row.get("trace_seconds", 0.0) + row.get("lower_seconds", 0.0)
            cells += (f" | {row.get('compiles', 0):>7} {row.get('compile_seconds', 0.0):>7.2f} {row.get('hits', 0):>4} "
                      f"{prep:>13.2f}")
        print(f"{program[:28]:<28}{cells}")
    rest = programs[TOP_PROGRAMS:]
    if rest:
        seconds = sum(first.get(p, {}).get("compile_seconds", 0.0) for p in rest)
        print(f"... {len(rest)} more programs ({seconds:.1f} compile s in the {names[0]} run; all in the JSON)")
    print()
    for n in names:
        r = records[n]
        t = r["totals"]
        print(f"{n}: {r['process_seconds']:.1f} s; {t['compiles']} compiles ({t['compile_seconds']:.1f} s), "
              f"{t['hits']} cache hits ({t['hit_seconds']:.1f} s), trace+lower {t['trace_lower_seconds']:.1f} s; "
              f"compiled twice: {r['compiled_twice'] or 'none'}; constant-folding warnings: {r['folding_warnings']}; "
              f"cache entries after: {r['cache_entries']}; "
              f"load average {r['load_before']:.1f} → {r['load_after']:.1f}")
    for n in ("warm", "again"):
        if {"cold", n} <= set(records):
            print(f"{n} / cold: {records[n]['process_seconds'] / records['cold']['process_seconds']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/dreamix_cold_start",
                        help="Holds the compilation cache, each run's demo workdir, record and stderr.")
    parser.add_argument("--runs", default="cold,warm,again",
                        help="Comma-separated, in order, from cold, warm and again (not first).")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cold_start.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run the demo here, write this record
    args = parser.parse_args()
    if args.child:
        child(args.workdir, args.child)
        return
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not runs or any(r not in RUNS for r in runs) or runs[0] == "again":
        raise SystemExit(f"--runs is {args.runs!r}; give a comma-separated list of {RUNS}.")
    root = pathlib.Path(args.workdir).absolute()
    cache = root / "xla_cache"
    root.mkdir(parents=True, exist_ok=True)
    records, workdir = {}, None
    for name in runs:
        if name == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        workdir = workdir if name == "again" else root / name
        print(f"running the demo {name} ...", flush=True)
        records[name] = launch(name, root, cache, workdir)
    print_tables(records)
    meta = dict(cpus=os.cpu_count(), python=sys.version.split()[0], jax=importlib.metadata.version("jax"), runs=runs,
                note="Timings on a shared host: see each run's load average.")
    print(f"wrote {write_json(args.out, dict(meta=meta, runs=records))}")


if __name__ == "__main__":
    main()
