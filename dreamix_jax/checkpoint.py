"""Checkpoints: reading public weight formats straight into a sharded model.

Weight import reads one array at a time, and for each device only the slice that device holds
(`jax.make_array_from_callback`), so no host ever materialises a full copy per device. Two
formats are read without their home frameworks:

  safetensors  Hugging Face files: `model.safetensors`, or shards listed by
               `model.safetensors.index.json`; memory-mapped, so a slice reads only its bytes.
  t5x          a `checkpoint_N/` directory: a msgpack `checkpoint` file whose leaves are small
               arrays or TensorStore specs of per-array zarr folders (local or `gs://`).
"""

import json
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from dreamix_jax.sharding import LOGICAL_AXIS_RULES, state_shardings

Index = tuple[slice, ...]


class LazyTensor(Protocol):
    """A checkpoint array that is read slice by slice."""

    shape: tuple[int, ...]

    def read(self, index: Index) -> np.ndarray: ...


# ------------------------------------------------------------------------------------------------
# safetensors.
# ------------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class _MappedTensor:
    """One tensor of a safetensors file, memory-mapped."""

    def __init__(self, path: pathlib.Path, offset: int, dtype: str, shape: Sequence[int]):
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path} holds a tensor of dtype {dtype}, which cannot be read; "
                             f"supported: {sorted(_SAFETENSORS_DTYPES)}.")
        self.shape = tuple(shape)
        self._array = np.memmap(path, dtype=_SAFETENSORS_DTYPES[dtype], mode="r", offset=offset,
                                shape=self.shape) if int(np.prod(self.shape)) else np.zeros(self.shape)

    def read(self, index: Index) -> np.ndarray:
        return np.array(self._array[index])


def _safetensors_file(path: pathlib.Path) -> dict[str, _MappedTensor]:
    """The tensors of one safetensors file: an 8-byte header length, a JSON header, then raw data."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    start = 8 + header_len
    return {name: _MappedTensor(path, start + info["data_offsets"][0], info["dtype"], info["shape"])
            for name, info in header.items() if name != "__metadata__"}


def open_safetensors(path: str | os.PathLike) -> dict[str, LazyTensor]:
    """Tensors of a local safetensors file, or of a directory with `model.safetensors` or its sharded index."""
    if str(path).startswith("gs://"):  # memory-mapped, which needs a local file
        raise ValueError(f"safetensors checkpoints are read from local files; copy {path} to a local folder first.")
    path = pathlib.Path(path)
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            tensors = {}
            for name in files:
                tensors.update(_safetensors_file(path / name))
            return tensors
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"No safetensors checkpoint at {str(path)!r}: give a .safetensors file or a "
                                "directory holding model.safetensors or model.safetensors.index.json.")
    return _safetensors_file(path)


# ------------------------------------------------------------------------------------------------
# t5x.
# ------------------------------------------------------------------------------------------------


class _InlineTensor:
    """A small array stored inside the msgpack file itself."""

    def __init__(self, array: np.ndarray):
        self._array = np.asarray(array)
        self.shape = self._array.shape

    def read(self, index: Index) -> np.ndarray:
        return self._array[index]


def _kvstore(directory: str) -> dict[str, str]:
    """A TensorStore key-value store spec for a local or `gs://bucket/...` directory."""
    if directory.startswith("gs://"):
        bucket, _, prefix = directory[len("gs://"):].partition("/")
        return {"driver": "gcs", "bucket": bucket, "path": prefix.rstrip("/") + "/" if prefix else ""}
    return {"driver": "file", "path": os.path.join(os.path.abspath(directory), "")}


class _TensorStoreTensor:
    """A zarr array written by TensorStore; slices are read on demand."""

    def __init__(self, spec: dict[str, Any], directory: str):
        import tensorstore as ts

        spec = json.loads(json.dumps(spec))  # a private copy, made absolute below
        # t5x stores paths relative to the checkpoint directory (older versions at the top level).
        relative = spec["kvstore"].get("path") or spec.pop("path")
        kvstore = _kvstore(directory)
        spec["kvstore"] = {**kvstore, "path": kvstore["path"] + relative}
        self._store = ts.open(spec, open=True, read=True).result()
        self.shape = tuple(self._store.shape)

    def read(self, index: Index) -> np.ndarray:
        return np.asarray(self._store[index].read().result())


def _is_ts_spec(x: Any) -> bool:
    return isinstance(x, dict) and {"driver", "kvstore"} <= set(x)


def open_t5x(directory: str | os.PathLike) -> dict[str, LazyTensor]:
    """Tensors under `target/` of a t5x checkpoint directory, named like `encoder/layers_0/mlp/wo/kernel`."""
    import tensorstore as ts
    from flax import serialization

    directory = str(directory)
    found = ts.KvStore.open(_kvstore(directory)).result().read("checkpoint").result()
    if found.state != "value":
        raise FileNotFoundError(f"No t5x checkpoint at {directory!r}: expected a 'checkpoint' msgpack file "
                                "there (give the checkpoint_<step> directory itself).")
    contents = serialization.msgpack_restore(found.value)
    target = contents.get("optimizer", contents).get("target")
    if target is None:
        raise ValueError(f"The t5x checkpoint at {directory!r} has no 'target' parameters.")

    def flatten(tree: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and not _is_ts_spec(value):
                yield from flatten(value, name + "/")
            else:
                yield name, value

    return {name: _TensorStoreTensor(leaf, directory) if _is_ts_spec(leaf) else _InlineTensor(leaf)
            for name, leaf in flatten(target, "")}


def open_checkpoint(path: str | os.PathLike, fmt: str) -> dict[str, LazyTensor]:
    """Tensors of a checkpoint in `fmt` ('safetensors' or 't5x')."""
    if fmt == "safetensors":
        return open_safetensors(path)
    if fmt == "t5x":
        return open_t5x(path)
    raise ValueError(f"Unknown checkpoint format {fmt!r}; use 'safetensors' or 't5x'.")


# ------------------------------------------------------------------------------------------------
# Into the target sharding.
# ------------------------------------------------------------------------------------------------


def _merged_axes(ours: Sequence[int], theirs: Sequence[int]) -> list[int] | None:
    """How many of our axes each checkpoint axis joins (heads × head_dim → one axis), or None."""
    counts, i = [], 0
    for size in theirs:
        start, prod = i, 1
        while i < len(ours) and (i == start or prod < size):
            prod *= ours[i]
            i += 1
        if prod != size:
            return None
        counts.append(i - start)
    return counts if i == len(ours) else None


def _read_slice(tensor: LazyTensor, transpose: bool, counts: Sequence[int], shape: Sequence[int],
                index: Index) -> np.ndarray:
    """Our `index` of a checkpoint tensor whose axes join ours as `counts` (after an optional transpose)."""
    index = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape, strict=True))
    source_index, inner_index, block_shape, axis = [], [], [], 0
    for count in counts:
        # A joined axis is read over whole rows of its leading axis, then reshaped and sliced.
        lead, inner = index[axis], shape[axis + 1:axis + count]
        size = int(np.prod(inner, dtype=np.int64))
        source_index.append(slice(lead.start * size, lead.stop * size))
        block_shape += [lead.stop - lead.start, *inner]
        inner_index += [slice(None), *index[axis + 1:axis + count]]
        axis += count
    if transpose:
        block = tensor.read(tuple(reversed(source_index))).T
    else:
        block = tensor.read(tuple(source_index))
    return block.reshape(block_shape)[tuple(inner_index)]


def load_weights(
    abstract_state: nnx.State,
    sources: Mapping[tuple, Any],
    tensors: Mapping[str, LazyTensor],
    mesh: Mesh,
    rules=LOGICAL_AXIS_RULES,
) -> nnx.State:
    """Fill an abstract nnx state from checkpoint `tensors`, each array straight into its sharding.

    `sources` maps every state path to an object with `names` (alternatives, first found wins),
    the stored `shape`, and `transpose` (stored (out, in), as PyTorch linears are). A missing or
    misshapen tensor stops before anything is read.
    """
    shardings = state_shardings(abstract_state, mesh, rules)
    flat = dict(nnx.to_flat_state(abstract_state))
    missing = sorted(set(flat) - set(sources), key=str)
    if missing:
        raise ValueError(f"No checkpoint name is known for weights {missing}.")

    plans = {}
    for path, variable in flat.items():
        source = sources[path]
        name = next((n for n in source.names if n in tensors), None)
        if name is None:
            raise KeyError(f"Checkpoint tensor {' or '.join(source.names)} is missing; expected shape "
                           f"{tuple(source.shape)}.")
        found = tuple(tensors[name].shape)
        counts = _merged_axes(variable.shape, tuple(reversed(found)) if source.transpose else found)
        if found != tuple(source.shape) or counts is None:
            raise ValueError(f"Checkpoint tensor {name} has shape {found}; expected {tuple(source.shape)} "
                             "for this model config.")
        plans[path] = (tensors[name], source.transpose, counts)

    flat_shardings = dict(nnx.to_flat_state(shardings))
    return nnx.from_flat_state([
        (path, variable.replace(_place(*plans[path], variable, flat_shardings[path].get_value())))
        for path, variable in flat.items()])


def _place(tensor: LazyTensor, transpose: bool, counts: Sequence[int], variable: Any,
           sharding: jax.sharding.Sharding) -> jax.Array:
    """One weight as a global array; each device's callback reads just that device's slice."""
    shape = tuple(variable.shape)
    slices: dict[tuple, np.ndarray] = {}  # replicated devices ask for the same slice: read it once

    def read(index: Index) -> np.ndarray:
        key = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
        if key not in slices:
            slices[key] = _read_slice(tensor, transpose, counts, shape, index).astype(variable.dtype)
        return slices[key]

    return jax.make_array_from_callback(shape, sharding, read)
