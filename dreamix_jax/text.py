"""Prompts → T5 embeddings: tokenize, encode jitted and sharded, cache each prompt on disk.

A sweep edits many videos with the same few prompts; each (weights, tokenizer, prompt, length)
is encoded once and then read back from `cache_dir` (local or gs://). The weights enter the key
through a fingerprint, so a different checkpoint never reads another's embeddings.
"""

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dreamix_jax import checkpoint
from dreamix_jax import workdir as workdir_lib
from dreamix_jax.models.t5 import (
    T5Config,
    T5Encoder,
    Tokenizer,
    checkpoint_names,
    make_tokenizer,
    tokenize,
)
from dreamix_jax.sharding import BATCH_AXES, batch_sharding, create_sharded

log = logging.getLogger(__name__)

FINGERPRINT_SAMPLES = 4096  # evenly strided values per weight that enter the fingerprint


def weights_fingerprint(state: nnx.State) -> str:
    """A hash of every weight's path, shape, dtype and an evenly strided sample of its values.

    The sample is gathered on device (no full host copy); bit-exact values, so it does not
    depend on the mesh the weights are sharded over.
    """
    flat = sorted(((".".join(map(str, path)), v.get_value()) for path, v in nnx.to_flat_state(state)),
                  key=lambda item: item[0])
    arrays = [a for _, a in flat]

    def sample(xs):
        return [x.reshape(-1)[::max(1, x.size // FINGERPRINT_SAMPLES)][:FINGERPRINT_SAMPLES] for x in xs]

    mesh = next((a.sharding.mesh for a in arrays if isinstance(a.sharding, NamedSharding)), None)
    replicated = NamedSharding(mesh, P()) if mesh is not None else None
    samples = jax.jit(sample, out_shardings=replicated)(arrays)
    digest = hashlib.sha256()
    for (name, array), values in zip(flat, samples, strict=True):
        digest.update(f"{name}:{array.shape}:{array.dtype}".encode())
        digest.update(np.asarray(values.addressable_data(0)).tobytes())
    return digest.hexdigest()[:32]


def _encode(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(ids, mask)


class TextEncoder:
    """Prompts → (embeddings (B, L, D) float32, mask (B, L) bool) as host arrays, cached per prompt."""

    def __init__(self, model: T5Encoder, tokenizer: Tokenizer, max_length: int, mesh: Mesh, *,
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 8):
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}.")
        self.graphdef, self.state = nnx.split(model)
        self.tokenizer, self.max_length, self.mesh = tokenizer, max_length, mesh
        self.dim = model.cfg.d_model
        data = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
        self.batch_size = -(-max(batch_size, 1) // data) * data  # a multiple of the data-parallel size
        self.cache_dir = workdir_lib.as_path(cache_dir) if cache_dir else None
        self.fingerprint = weights_fingerprint(self.state)
        self.encoded_prompts = 0  # prompts that went through the encoder (not read from the cache)
        self._encode = jax.jit(_encode, static_argnums=0, out_shardings=batch_sharding(mesh, 3))

    def cache_key(self, prompt: str) -> str:
        """The file stem a prompt's embedding is cached under."""
        key = json.dumps([self.fingerprint, self.tokenizer.name, self.max_length, prompt])
        return hashlib.sha256(key.encode()).hexdigest()

    def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and masks for `prompts`, encoding only those not in the cache."""
        found = {p: self._read_cache(p) for p in dict.fromkeys(prompts)}
        todo = [p for p, hit in found.items() if hit is None]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for prompt, result in zip(chunk, self._run(chunk), strict=True):
                found[prompt] = result
                self._write_cache(prompt, *result)
        embeddings = np.stack([found[p][0] for p in prompts]) if prompts else np.zeros((0, self.max_length, self.dim))
        masks = np.stack([found[p][1] for p in prompts]) if prompts else np.zeros((0, self.max_length), bool)
        return embeddings.astype(np.float32), masks

    def _run(self, prompts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Encode one padded batch of prompts on the mesh."""
        ids, mask = tokenize(self.tokenizer, list(prompts) + [""] * (self.batch_size - len(prompts)),
                             self.max_length)
        with jax.set_mesh(self.mesh):
            out = self._encode(self.graphdef, self.state, self._place(ids), self._place(mask))
        out = np.asarray(multihost_utils.process_allgather(out, tiled=True), np.float32)
        self.encoded_prompts += len(prompts)
        return [(out[i], mask[i]) for i in range(len(prompts))]

    def _place(self, rows: np.ndarray) -> jax.Array:
        """Every process holds all rows; each device takes its share of the batch."""
        return jax.make_array_from_callback(rows.shape, batch_sharding(self.mesh, rows.ndim), lambda i: rows[i])

    def _read_cache(self, prompt: str) -> tuple[np.ndarray, np.ndarray] | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{self.cache_key(prompt)}.npz"
        if not path.is_file():
            return None
        with path.open("rb") as file, np.load(file) as data:
            return data["embedding"], data["mask"]

    def _write_cache(self, prompt: str, embedding: np.ndarray, mask: np.ndarray) -> None:
        if self.cache_dir is None:
            return
        # Written in one step: a reader never sees half a file.
        with workdir_lib.atomic_path(self.cache_dir / f"{self.cache_key(prompt)}.npz") as tmp:
            np.savez(tmp, embedding=embedding, mask=mask, prompt=np.array(prompt))


def load_encoder(config: Mapping[str, Any], mesh: Mesh) -> T5Encoder:
    """The T5 encoder a config describes, sharded on `mesh`: read from `config.checkpoint` or freshly initialised."""
    cfg = T5Config.from_config(config["model"])
    ckpt = config.get("checkpoint") or {}
    if not ckpt.get("path"):
        log.warning("No T5 checkpoint configured (config.checkpoint.path): using random weights, seed %d.",
                    config.get("seed", 0))
        return create_sharded(lambda: T5Encoder(cfg, rngs=nnx.Rngs(config.get("seed", 0))), mesh)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0))))
    tensors = checkpoint.open_checkpoint(ckpt["path"], ckpt["format"])
    state = checkpoint.load_weights(abstract, checkpoint_names(cfg, ckpt["format"]), tensors, mesh)
    return nnx.merge(graphdef, state)


def text_encoder_from_config(config: Mapping[str, Any], mesh: Mesh,
                             cache_dir: str | os.PathLike | None = None) -> TextEncoder:
    """A `TextEncoder` for `configs/t5.py`-style config: encoder weights, tokenizer and max length."""
    return TextEncoder(load_encoder(config, mesh), make_tokenizer(config["tokenizer"]), config["max_length"],
                       mesh, cache_dir=cache_dir, batch_size=config.get("batch_size", 8))

