"""data/pipeline.py in-process, on tiny in-memory splits: stream positions, epochs, per-example randomness,
eval padding, sequence lengths and the iterator state a checkpoint stores."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxdist.data import pipeline, sources
from jaxdist.errors import ConfigError, InputError
from jaxdist.parallel.mesh import build_mesh
from jaxdist.parallel.sharding import BatchShardings
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def mesh():
    return build_mesh(tiny_config(mesh=dict(data=4, spatial=2)).mesh)


@pytest.fixture(scope="module")
def shardings(mesh):
    """Rows over data; images also split their height over spatial (so that a mix-up of the two shows)."""
    return BatchShardings(NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec("data", "spatial")))


def _split(n=10, augment="none", lengths=None):
    """Record i: a 2x2x1 image of value i / 100, label i."""
    images = (np.arange(n, dtype=np.float32)[:, None, None, None] / 100) * np.ones((n, 2, 2, 1), np.float32)
    config = tiny_config(**{"data.augment": augment}).data
    return sources.Split(sources.ArraySource(images, np.arange(n), lengths),
                         sources.ImageTransform(config, 0.0, 1.0, train=True))


def _data(**options):
    return tiny_config(**{f"data.{k}": v for k, v in options.items()}).data


def test_local_rows_of_a_split_and_of_a_replicated_sharding(mesh):
    assert pipeline.local_rows(NamedSharding(mesh, PartitionSpec("data")), 16) == slice(0, 16)
    assert pipeline.local_rows(NamedSharding(mesh, PartitionSpec()), 16) == slice(0, 16)  # start and stop None


def test_epoch_permutation_is_a_seeded_permutation_per_epoch():
    a = pipeline.epoch_permutation(0, 0, 50)
    assert sorted(a.tolist()) == list(range(50))
    np.testing.assert_array_equal(a, np.random.default_rng((0, 0)).permutation(50))
    assert not np.array_equal(a, pipeline.epoch_permutation(0, 1, 50))
    assert not np.array_equal(a, pipeline.epoch_permutation(1, 0, 50))


def test_example_keys_depend_on_seed_and_position_alone():
    """A key is a pure function of (seed, position): the same alone or in any batch, different for another seed or
    position (10,000 positions: all distinct), with every bit set about half the time."""
    keys = pipeline.example_keys(3, np.arange(10_000))
    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == 10_000
    assert pipeline.example_keys(3, [7])[0] == keys[7] and pipeline.example_keys(3, np.arange(5, 9))[2] == keys[7]
    assert len(set(pipeline.example_keys(4, np.arange(10_000)).tolist()) & set(keys.tolist())) == 0
    bits = (keys[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    assert np.all(np.abs(bits.mean(0) - 0.5) < 0.03)


_M64 = 2**64 - 1


def _splitmix64_mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _splitmix64(state: int, n: int) -> list[int]:
    """Vigna's reference SplitMix64 (splitmix64.c) in Python's integers: its first n outputs from `state`."""
    return [_splitmix64_mix((state + (i + 1) * 0x9E3779B97F4A7C15) & _M64) for i in range(n)]


def test_example_keys_are_the_outputs_of_splitmix64_seeded_from_the_seed():
    """Key p of a seed is output p of SplitMix64 started at the seed's mix, checked against the reference in
    exact integers (itself checked against the reference's published first outputs for states 0 and 1234567):
    a changed constant, shift or offset changes the keys."""
    assert _splitmix64(0, 1) == [0xE220A8397B1DCDAF] and _splitmix64(1234567, 1) == [6457827717110365317]
    for seed in (0, 5, 2**40 + 3):
        start = _splitmix64_mix(seed)
        assert pipeline.example_keys(seed, np.arange(50)).tolist() == _splitmix64(start, 50)


def test_next_batch_names_what_was_being_read_when_the_reader_fails():
    def batches():
        yield {"images": 1}
        raise OSError("disk went away")

    reader = batches()
    assert pipeline.next_batch(reader, "the batch of step 7") == {"images": 1}
    with pytest.raises(InputError) as e:
        pipeline.next_batch(reader, "the batch of step 8")
    assert str(e.value) == "reading the batch of step 8 failed: OSError: disk went away"
    assert pipeline.next_batch(iter([]), "the batch of step 9") is None  # the end: None, not StopIteration


def test_train_batch_reads_positions_through_each_epochs_permutation():
    split = _split(10)
    reader = pipeline._TrainBatch(split, 4, 5, slice(1, 3))  # rows 1 and 2 of each global batch of 4
    np.testing.assert_array_equal(reader.positions(0), [1, 2])
    np.testing.assert_array_equal(reader.positions(3), [13, 14])  # epoch 1, offsets 3 and 4
    perm0, perm1 = pipeline.epoch_permutation(5, 0, 10), pipeline.epoch_permutation(5, 1, 10)
    assert [reader.record(p) for p in (0, 9, 10, 13)] == [perm0[0], perm0[9], perm1[0], perm1[3]]
    assert all(type(reader.record(p)) is int for p in (0, 13))
    batch = reader(3)
    np.testing.assert_array_equal(batch["labels"], [perm1[3], perm1[4]])
    assert batch["labels"].dtype == np.int32 and batch["images"].shape == (2, 2, 2, 1)
    np.testing.assert_allclose(batch["images"][:, 0, 0, 0], np.asarray([perm1[3], perm1[4]]) / 100, rtol=1e-6)
    assert "lengths" not in batch and "mask" not in batch


def test_train_batch_gives_each_position_its_own_randomness():
    """With a random transform the batch gets example_keys(seed, positions); without one, no keys at all."""
    calls = []

    class Recorder(sources.ImageTransform):
        def batch(self, images, keys):
            calls.append(None if keys is None else keys.tolist())
            return super().batch(images, keys)

    config = tiny_config(**{"data.augment": "flip"}).data
    split = _split(10)
    split = sources.Split(split.source, Recorder(config, 0.0, 1.0, train=True))
    pipeline._TrainBatch(split, 4, 5, slice(0, 4))(2)
    assert calls == [pipeline.example_keys(5, np.arange(8, 12)).tolist()]
    calls.clear()
    plain = sources.Split(split.source, Recorder(tiny_config().data, 0.0, 1.0, train=True))
    pipeline._TrainBatch(plain, 4, 5, slice(0, 4))(2)
    assert calls == [None]


def test_sequence_lengths_follow_their_records():
    split = _split(10, lengths=np.arange(10) + 100)
    train = pipeline._TrainBatch(split, 4, 1, slice(0, 4))(1)
    np.testing.assert_array_equal(train["lengths"], train["labels"] + 100)
    assert train["lengths"].dtype == np.int32
    evaluated = pipeline._EvalBatch(split, 4, slice(0, 4))(2)  # ids 8, 9 and two padding rows (record 0)
    np.testing.assert_array_equal(evaluated["lengths"], [108, 109, 100, 100])
    assert evaluated["lengths"].dtype == np.int32


def test_eval_batch_pads_with_example_zero_masked_out():
    split = _split(10)
    batch = pipeline._EvalBatch(split, 4, slice(1, 4))(2)  # ids 9, 10, 11 of which only 9 exists
    np.testing.assert_array_equal(batch["labels"], [9, 0, 0])
    np.testing.assert_array_equal(batch["mask"], [1.0, 0.0, 0.0])
    assert batch["mask"].dtype == np.float32 and batch["labels"].dtype == np.int32
    np.testing.assert_allclose(batch["images"][:, 0, 0, 0], [0.09, 0.0, 0.0], rtol=1e-6)
    full = pipeline._EvalBatch(split, 4, slice(0, 4))(1)
    np.testing.assert_array_equal(full["labels"], [4, 5, 6, 7])
    np.testing.assert_array_equal(full["mask"], 1.0)


def test_eval_batches_count_and_global_arrays(shardings):
    split = _split(10)
    batches = list(pipeline.eval_batches(split, _data(prefetch=0), 8, shardings))
    assert len(batches) == 2  # ceil(10 / 8)
    assert all(isinstance(b["labels"], jax.Array) and b["labels"].shape == (8,) for b in batches)
    assert batches[0]["images"].sharding == shardings.images and batches[1]["mask"].sharding == shardings.rows
    assert batches[0]["labels"].sharding == shardings.rows and shardings.rows != shardings.images
    np.testing.assert_array_equal(np.asarray(batches[1]["mask"]), [1, 1, 0, 0, 0, 0, 0, 0])
    assert len(list(pipeline.eval_batches(_split(16), _data(), 8, shardings))) == 2  # exact: no empty batch


def test_train_iterator_state_and_batches(shardings):
    split = _split(20)
    it = pipeline.TrainIterator(split, _data(num_threads=2, prefetch=1), 8, 3, shardings, start=2, stop=5)
    assert it.state() == {"next_batch": 2, "seed": 3, "global_batch": 8, "records": 20}
    batch = next(it)
    assert it.state()["next_batch"] == 3
    reader = pipeline._TrainBatch(split, 8, 3, slice(0, 8))
    np.testing.assert_array_equal(np.asarray(batch["labels"]), reader(2)["labels"])
    np.testing.assert_array_equal(it.indices(2), reader(2)["labels"])
    assert batch["labels"].shape == (8,) and batch["images"].sharding == shardings.images
    assert batch["labels"].sharding == shardings.rows and batch["images"].shape == (8, 2, 2, 1)
    assert [int(np.asarray(b["labels"])[0]) for b in it] == [reader(3)["labels"][0], reader(4)["labels"][0]]
    assert it.state()["next_batch"] == 5  # stop: exhausted


def test_train_iterator_threads_and_no_prefetch_give_the_same_batches(shardings):
    split = _split(20, augment="flip")
    def labels(**options):
        it = pipeline.TrainIterator(split, _data(**options), 8, 0, shardings, start=0, stop=3)
        return [np.asarray(b["images"]).tolist() for b in it]
    assert labels(num_threads=0, prefetch=0) == labels(num_threads=3, prefetch=2)


@pytest.mark.parametrize("key, saved, now", [("seed", 4, 3), ("global_batch", 16, 8), ("records", 21, 20)])
def test_check_resumable_names_the_field(shardings, key, saved, now):
    it = pipeline.TrainIterator(_split(20), _data(), 8, 3, shardings, start=0, stop=5)
    it.check_resumable({**it.state(), "next_batch": 4})  # the position itself may differ
    with pytest.raises(ConfigError) as e:
        it.check_resumable({**it.state(), key: saved})
    assert str(e.value) == (f"data iterator state: checkpoint has {key}={saved} but this run has {now}; resuming "
                            "would not see the batches the checkpointed run would have")
    state = it.state()
    del state[key]
    with pytest.raises(ConfigError, match=f"checkpoint has {key}=None but"):
        it.check_resumable(state)


class _PidSource:
    """Each record's label is the id of the process that read it."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        import os
        return np.zeros((2, 2, 1), np.float32), os.getpid()


@pytest.mark.parametrize("workers", [0, 1])
def test_worker_count_reads_in_that_many_worker_processes(shardings, workers):
    import os
    split = sources.Split(_PidSource(), sources.ImageTransform(tiny_config().data, 0.0, 1.0, train=False))
    it = pipeline.TrainIterator(split, _data(worker_count=workers), 8, 0, shardings, start=0, stop=2)
    pids = {int(p) for batch in it for p in np.asarray(batch["labels"])}
    assert (pids == {os.getpid()}) == (workers == 0) and len(pids) == 1


def test_close_stops_a_started_pipelines_threads_and_is_harmless_before_start(shardings):
    """close() from the loop's thread: an iterator never started has nothing to stop; a started one's reader and
    prefetch threads end (left to the exit handlers they can race each other after a reader failed)."""
    import threading
    import time

    pipeline.TrainIterator(_split(40), _data(num_threads=2), 8, 0, shardings, start=0, stop=5).close()
    before = set(threading.enumerate())
    it = pipeline.TrainIterator(_split(40), _data(num_threads=2), 8, 0, shardings, start=0, stop=5)
    next(it)
    started = set(threading.enumerate()) - before
    assert started  # the pipeline's own threads
    it.close()
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in started if t.is_alive()]
