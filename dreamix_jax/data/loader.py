"""Grain input pipelines: shuffled, sharded per process, batched, with a checkpointable iterator."""

from collections.abc import Sequence

import grain
import jax
import numpy as np

from dreamix_jax.models.t5 import Tokenizer, tokenize


def to_unit(video):
    """uint8 pixels → float32 in [-1, 1]; numpy or jax arrays (the train step converts on the device)."""
    return video.astype(np.float32) / 127.5 - 1.0


class Decode(grain.transforms.Map):
    """Every bytes field → str and, given a tokenizer, `<field>_ids` / `<field>_mask` of the text
    fields; the clip stays uint8. (Augmentations before it may already have written str fields: a
    batch then still holds one type per field.)

    Converting clips to float32 here cost a quarter of the loader's time and 4× the bytes to copy to
    the device, where `to_unit` does it inside the step.
    """

    def __init__(self, tokenizer: Tokenizer | None = None, max_length: int = 0,
                 text_fields: Sequence[str] = ("caption", "image_caption")):
        self.tokenizer, self.max_length, self.text_fields = tokenizer, max_length, tuple(text_fields)

    def map(self, record: dict) -> dict:
        out = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in record.items()}
        out["video"] = np.asarray(record["video"], np.uint8)
        if self.tokenizer is not None:
            for field in self.text_fields:
                ids, mask = tokenize(self.tokenizer, [out[field]], self.max_length)
                out[f"{field}_ids"], out[f"{field}_mask"] = ids[0], mask[0]
        return out


class RowsOfGlobalBatches:
    """A sampler: this process's rows of every global batch drawn from `global_order`."""

    def __init__(self, global_order: grain.samplers.IndexSampler, shard_index: int, shard_count: int,
                 batch_size: int):
        self._order, self._index, self._count, self._batch = global_order, shard_index, shard_count, batch_size

    def __repr__(self) -> str:  # grain checks a restored iterator's sampler by its repr
        return (f"RowsOfGlobalBatches({self._order!r}, shard_index={self._index}, shard_count={self._count}, "
                f"batch_size={self._batch})")

    def __getitem__(self, position: int) -> grain.RecordMetadata:
        batch, row = divmod(position, self._batch)
        record = self._order[(batch * self._count + self._index) * self._batch + row]  # IndexError ends an epoch
        return grain.RecordMetadata(index=position, record_key=record.record_key, rng=record.rng)


def make_loader(
    source,
    *,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    tokenizer: Tokenizer | None = None,
    max_length: int = 0,
    workers: int = 0,
    augment: Sequence[grain.transforms.Map | grain.transforms.RandomMap] = (),
) -> grain.DataLoader:
    """A loader over `source` yielding this process's batches of `batch_size` examples.

    Process i of n (default: this JAX process) reads only rows [i·b, (i+1)·b) of each global batch
    of n·b examples, whose order is fixed by `seed` alone: the global batches are the same on any
    number of processes, and a run restarted with the same seed and iterator state sees the same data.
    `workers` > 0 decodes in that many processes, each batching every workers-th of those rows: the
    batches then depend on the worker count too (fixed by it, and resumable), while each epoch still
    reads every row once. `augment` transforms each record before it is decoded.
    """
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if len(source) < shard_count * batch_size:
        raise ValueError(f"{len(source)} examples cannot fill a batch of {batch_size} on each of "
                         f"{shard_count} processes; build a larger dataset or lower the batch size.")
    global_order = grain.samplers.IndexSampler(num_records=len(source), shuffle=True, seed=seed,
                                               num_epochs=num_epochs, shard_options=grain.sharding.NoSharding())
    sampler = RowsOfGlobalBatches(global_order, shard_index, shard_count, batch_size)
    operations = [*augment, Decode(tokenizer, max_length), grain.transforms.Batch(batch_size, drop_remainder=True)]
    # Read two batches ahead, not grain's default of 500 records: that read-ahead costs a second or more of
    # CPU each time a loader starts, taken from compiling and from the steps on a few-core host.
    ahead = 2 * batch_size
    read_options = grain.ReadOptions(num_threads=min(16, ahead), prefetch_buffer_size=ahead)
    return grain.DataLoader(data_source=source, sampler=sampler, operations=operations, worker_count=workers,
                            shard_options=grain.sharding.NoSharding(),  # the sampler picks this process's rows
                            read_options=read_options)


class Lookahead:
    """A loader iterator that can read its next batch early, while the device runs the last step.

    `prefetch()` reads the next batch into a buffer; `next()` hands it out. The state (what a
    checkpoint stores) is always that of the batches handed out, so a run resumed from it reads the
    buffered batch again, as an uninterrupted run does.
    """

    def __init__(self, iterator):
        self._iterator, self._buffer, self._state = iterator, None, None

    def prefetch(self) -> None:
        if self._buffer is None:
            self._state = self._iterator.get_state()
            self._buffer = next(self._iterator)

    def __iter__(self):
        return self

    def __next__(self):
        if self._buffer is None:
            return next(self._iterator)
        batch, self._buffer = self._buffer, None
        return batch

    def get_state(self):
        return self._iterator.get_state() if self._buffer is None else self._state

    def set_state(self, state) -> None:
        self._buffer = None
        self._iterator.set_state(state)

    def start_prefetch(self) -> None:  # grain's checkpoint handler calls it after `set_state`
        self._iterator.start_prefetch()
