"""Shared by the benchmark scripts: results are JSON, written atomically."""

import json
import pathlib


def write_json(path: str | pathlib.Path, payload: dict) -> pathlib.Path:
    """Write `payload` to `path` under a temporary name, then rename (a reader never sees half a file)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path
