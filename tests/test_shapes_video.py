"""The `shapes_video` TFDS dataset (ArrayRecord, no TensorFlow) and its grain loader."""

import dataclasses
import time

import jax.numpy as jnp
import numpy as np
import pytest

from dreamix_jax.data import loader, shapes_video, synthetic
from dreamix_jax.models.t5 import ByteTokenizer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    shapes_video.build(str(path), "smoke")
    return str(path)


def test_records_are_the_rendered_clips(data_dir):
    train = shapes_video.source(data_dir, "train", "smoke")
    assert len(train) == 16
    for i in range(len(train)):
        record = train[i]
        attrs = synthetic.sample_attributes(int(record["seed"]))
        expected = synthetic.render(attrs, 2, 16, 16)
        assert np.abs(record["video"] / 127.5 - 1.0 - expected).max() <= 0.5 / 127.5 + 1e-6
        assert record["caption"].decode() == attrs.caption() and not record["held_out"]
        assert record["color"].decode() == attrs.color and record["size"].decode() == attrs.size
    held = shapes_video.source(data_dir, "held_out", "smoke")
    assert len(held) == 4 and all(held[i]["held_out"] for i in range(len(held)))
    test_seeds = {int(r["seed"]) for r in (shapes_video.source(data_dir, "test", "smoke")[i] for i in range(4))}
    assert test_seeds.isdisjoint(int(train[i]["seed"]) for i in range(16))


def test_recolor_repaints_a_share_of_records_and_captions_them(data_dir):
    train = shapes_video.source(data_dir, "train", "smoke")
    rng = np.random.default_rng(0)
    records = [train[i] for i in range(len(train))]
    assert all(shapes_video.Recolor(0.0).random_map(r, rng) is r for r in records)
    changed = 0
    for record in records:
        out = shapes_video.Recolor(1.0).random_map(record, rng)
        attrs = dataclasses.replace(synthetic.sample_attributes(int(record["seed"])), color=out["color"])
        assert out["caption"] == attrs.caption() and out["image_caption"] == attrs.caption(video=False)
        assert not out["held_out"] and out["shape"] == record["shape"].decode()
        assert out["video"].dtype == np.uint8 and out["video"].shape == record["video"].shape
        changed += int(np.abs(out["video"].astype(int) - record["video"]).max() > 20)
    assert changed >= len(records) - 2  # a random colour can land near the original
    # A record its seed does not render (another version of the renderer) fails loudly.
    with pytest.raises(ValueError, match="build it again"):
        other = next(r["caption"] for r in records if r["caption"] != records[0]["caption"])
        shapes_video.Recolor(1.0).random_map(dict(records[0], caption=other), rng)
    with pytest.raises(ValueError, match="fraction"):
        shapes_video.Recolor(1.5)
    # In the loader the share is drawn per record from the sampler's seed: the same on every run.
    batches = [loader.make_loader(train, batch_size=4, seed=0, num_epochs=1, augment=[shapes_video.Recolor(0.5)])
               for _ in range(2)]
    for a, b in zip(*batches, strict=True):
        np.testing.assert_array_equal(a["video"], b["video"])
        assert list(a["caption"]) == list(b["caption"])
        assert all(isinstance(c, str) for c in a["color"])  # recoloured or not, one type per field


def _seeds(data_dir, **kw):
    source = shapes_video.source(data_dir, "train", "smoke")
    return [b["seed"].tolist() for b in loader.make_loader(source, batch_size=2, num_epochs=1, **kw)]


def test_loader_shards_per_process_deterministically(data_dir):
    one = _seeds(data_dir, seed=0, shard_index=0, shard_count=1)
    assert _seeds(data_dir, seed=0, shard_index=0, shard_count=1) == one  # same seed, same order
    assert _seeds(data_dir, seed=1, shard_index=0, shard_count=1) != one
    first = _seeds(data_dir, seed=0, shard_index=0, shard_count=2)
    second = _seeds(data_dir, seed=0, shard_index=1, shard_count=2)
    flat = lambda batches: [s for b in batches for s in b]  # noqa: E731
    assert set(flat(first)).isdisjoint(flat(second))
    assert sorted(flat(first) + flat(second)) == sorted(flat(one))
    # Two processes' batches of 2 are the two halves of one process's batches of 4.
    whole = [b["seed"].tolist() for b in loader.make_loader(shapes_video.source(data_dir, "train", "smoke"),
                                                             batch_size=4, num_epochs=1, seed=0, shard_index=0,
                                                             shard_count=1)]
    assert whole == [a + b for a, b in zip(first, second, strict=True)] and len(whole) == 4


def test_loader_decodes_tokenizes_and_resumes(data_dir):
    source = shapes_video.source(data_dir, "train", "smoke")
    make = lambda: loader.make_loader(source, batch_size=4, seed=3, shard_index=0, shard_count=1,  # noqa: E731
                                      tokenizer=ByteTokenizer(), max_length=64)
    it = iter(make())
    batch = next(it)
    assert batch["video"].dtype == np.uint8 and batch["video"].shape == (4, 2, 16, 16, 3)
    unit = loader.to_unit(batch["video"])
    assert unit.dtype == np.float32 and -1.0 <= unit.min() and unit.max() <= 1.0
    np.testing.assert_allclose(loader.to_unit(jnp.asarray(batch["video"])), unit, atol=1e-6)  # as the step does
    assert batch["caption_ids"].shape == (4, 64) and batch["caption_mask"].sum(1).tolist() == [
        len(c.encode()) + 1 for c in batch["caption"]]
    assert batch["image_caption_mask"].sum() < batch["caption_mask"].sum()  # no motion words
    state = it.get_state()
    expected = [next(it)["seed"].tolist() for _ in range(3)]
    resumed = iter(make())
    resumed.set_state(state)
    assert [next(resumed)["seed"].tolist() for _ in range(3)] == expected
    with pytest.raises(ValueError, match="cannot fill a batch of 16 on each of 2 processes"):
        loader.make_loader(source, batch_size=16, seed=0, shard_index=0, shard_count=2)


class CountingSource:
    """A data source that counts the records read from it."""

    def __init__(self, source):
        self.source, self.reads = source, 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, key):
        self.reads += 1
        return self.source[key]


def test_loader_reads_at_most_two_batches_ahead(data_dir):
    source = CountingSource(shapes_video.source(data_dir, "train", "smoke"))
    batches = iter(loader.make_loader(source, batch_size=2, seed=0, shard_index=0, shard_count=1))
    next(batches)
    time.sleep(0.5)  # time for a read-ahead to run (grain's default reads 500 records: 31 epochs of 16)
    assert 2 <= source.reads <= 3 * 2  # the batch handed out and two ahead


def test_lookahead_hands_out_the_same_batches_and_states(data_dir):
    source = shapes_video.source(data_dir, "train", "smoke")
    make = lambda: iter(loader.make_loader(source, batch_size=2, seed=5, shard_index=0, shard_count=1))  # noqa: E731
    plain, ahead = make(), loader.Lookahead(make())
    for _ in range(3):
        state = plain.get_state()
        assert ahead.get_state() == state
        ahead.prefetch()
        assert ahead.get_state() == state  # a checkpoint taken now resumes at the buffered batch
        assert next(ahead)["seed"].tolist() == next(plain)["seed"].tolist()
    ahead.prefetch()
    resumed = loader.Lookahead(make())
    resumed.set_state(ahead.get_state())
    assert next(resumed)["seed"].tolist() == next(ahead)["seed"].tolist() == next(plain)["seed"].tolist()


def test_loader_workers_are_deterministic_resumable_and_cover_the_epoch(data_dir):
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's worker processes read its absl flags (train.py parses them)
        flags.FLAGS.mark_as_parsed()
    source = shapes_video.source(data_dir, "train", "smoke")
    make = lambda workers, epochs=None: iter(loader.make_loader(  # noqa: E731
        source, batch_size=2, seed=1, num_epochs=epochs, shard_index=0, shard_count=1, workers=workers))
    seeds = lambda it, n: [next(it)["seed"].tolist() for _ in range(n)]  # noqa: E731
    epoch = [s for b in make(2, epochs=1) for s in b["seed"].tolist()]
    assert sorted(epoch) == sorted(s for b in make(0, epochs=1) for s in b["seed"].tolist()) and len(epoch) == 16
    first = make(2)
    head = seeds(first, 3)
    state = first.get_state()
    rest = seeds(first, 3)
    assert seeds(make(2), 6) == head + rest
    resumed = make(2)
    resumed.set_state(state)
    assert seeds(resumed, 3) == rest

