"""Grain pipelines that turn a Split into global jax.Array batches, each process reading only its rows.

Training order: the example stream is a fresh seeded permutation of the records every epoch, global batch k is stream positions [k*B, (k+1)*B), and each process reads the rows
of that batch its devices hold. So the batch order depends on (seed, k) only, not on the number of
processes or devices, each process reads 1/P of every epoch, and an iterator's whole state is the index
of the next batch (`TrainIterator.state`), which the checkpoint stores. (Grain's `ShardByJaxProcess` is
not used: it shards before shuffling, which would tie the global batch order to the process count.)

Grain runs the per-batch work (read, decode, augment) in `data.num_threads` threads or, with
`data.worker_count > 0`, in worker processes, and a background thread keeps `data.prefetch` batches
already on the devices, so the step loop only waits when input is slower than the step.
"""
import dataclasses
import functools
from collections.abc import Iterator

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxdist.data.sources import Split
from jaxdist.errors import ConfigError, InputError
from jaxdist.parallel.sharding import BatchShardings


def local_rows(sharding: NamedSharding, global_batch: int) -> slice:
    """The contiguous rows of a global batch that this process's devices hold (`sharding`: the rows')."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map((global_batch,)).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(global_batch if rows.stop is None else rows.stop)
    return slice(min(starts), max(stops))


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    """Record order of one epoch: a pure function of (seed, epoch), one array per epoch (cached)."""
    return np.random.default_rng((seed, epoch)).permutation(size)


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijection of uint64 whose every output bit depends on every input bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def example_keys(seed: int, positions: np.ndarray) -> np.ndarray:
    """Augmentation randomness of the examples at global stream positions, 64 bits each (uint64): output
    `position` of a SplitMix64 generator seeded from `seed`. A pure function of (seed, position), so the same
    on any topology, and one vectorized pass for a whole batch."""
    start = _mix64(np.asarray([seed], np.uint64))
    return _mix64(start + (np.asarray(positions, np.uint64) + np.uint64(1)) * _GOLDEN_GAMMA)


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
    """Global batch k -> this process's rows, read and transformed. Picklable, for Grain's workers."""
    split: Split
    global_batch: int
    seed: int
    rows: slice

    def record(self, position: int) -> int:
        """Stream position -> record id."""
        epoch, offset = divmod(position, self.split.size)
        return int(epoch_permutation(self.seed, epoch, self.split.size)[offset])

    def positions(self, k: int) -> np.ndarray:
        return np.arange(k * self.global_batch, (k + 1) * self.global_batch)[self.rows]

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        positions = self.positions(k)
        records = [self.record(int(p)) for p in positions]
        examples = [self.split.source[r] for r in records]
        keys = example_keys(self.seed, positions) if self.split.transform.random else None
        batch = {"images": self.split.transform.batch([image for image, _ in examples], keys),
                 "labels": np.asarray([label for _, label in examples], np.int32)}
        if self.split.lengths is not None:  # padded sequences: their valid steps
            batch["lengths"] = self.split.lengths[records].astype(np.int32)
        return batch


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
    """Eval batch k in split order; rows past the end repeat example 0 with mask 0."""
    split: Split
    global_batch: int
    rows: slice

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        ids = np.arange(k * self.global_batch, (k + 1) * self.global_batch)[self.rows]
        valid = ids < self.split.size
        records = np.where(valid, ids, 0)
        examples = [self.split.source[int(i)] for i in records]
        batch = {"images": self.split.transform.batch([image for image, _ in examples], None),
                 "labels": np.asarray([label for _, label in examples], np.int32),
                 "mask": valid.astype(np.float32)}
        if self.split.lengths is not None:
            batch["lengths"] = self.split.lengths[records].astype(np.int32)
        return batch


@dataclasses.dataclass(frozen=True)
class _ToGlobal:
    shardings: BatchShardings
    global_batch: int

    def __call__(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(self.shardings.of(k), v, (self.global_batch, *v.shape[1:]))
                for k, v in local.items()}


def _run(batches: grain.MapDataset, data_config, to_global: _ToGlobal) -> grain.IterDataset:
    threads = max(1, data_config.num_threads)
    ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
    if data_config.worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.worker_count))
    ds = ds.map(to_global)
    if data_config.prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data_config.prefetch)
    return ds


class TrainIterator(Iterator):
    """Global train batches `start`, `start + 1`, ... `stop - 1`; its state is the next batch index."""

    def __init__(self, split: Split, data_config, global_batch: int, seed: int, shardings: BatchShardings,
                 start: int, stop: int):
        self._batch = _TrainBatch(split, global_batch, seed, local_rows(shardings.rows, global_batch))
        self._identity = {"seed": seed, "global_batch": global_batch, "records": split.size}
        self._next = start
        self._dataset = _run(grain.MapDataset.range(start, stop).map(self._batch), data_config,
                             _ToGlobal(shardings, global_batch))
        self._iterator = None  # started on first use: threads and workers only for iterators that run

    def __next__(self) -> dict[str, jax.Array]:
        if self._iterator is None:
            self._iterator = iter(self._dataset)
        batch = next(self._iterator)
        self._next += 1
        return batch

    def close(self) -> None:
        """Stops the pipeline's threads and worker processes, from this thread. Left to the exit handlers, a
        worker's iterator can be stopped by two threads at once after a reader failed (grain 0.2.18), which
        prints a traceback after jaxdist's one-line error."""
        if self._iterator is not None:
            self._iterator.close()

    def indices(self, k: int) -> np.ndarray:
        """Record ids of this process's rows of global batch k (for tests and debugging)."""
        return np.asarray([self._batch.record(int(p)) for p in self._batch.positions(k)])

    def state(self) -> dict:
        """What a checkpoint stores: the next batch, and what must match for that index to mean the same."""
        return {"next_batch": self._next, **self._identity}

    def check_resumable(self, saved: dict) -> None:
        """Refuses (naming the field) a checkpoint whose data state would mean other batches here."""
        for key, value in self._identity.items():
            if saved.get(key) != value:
                raise ConfigError(f"data iterator state: checkpoint has {key}={saved.get(key)} but this run has "
                                 f"{value}; resuming would not see the batches the checkpointed run would have")


def next_batch(batches, what: str):
    """The next batch, or None after the last; a failure in the pipeline's threads or workers (Grain raises it
    here) becomes an InputError naming what was being read, with the original message."""
    try:
        return next(batches, None)
    except Exception as e:  # whatever the reader raised: its message names the file or the source
        raise InputError(f"reading {what} failed: {type(e).__name__}: {e}") from None


def eval_batches(split: Split, data_config, global_batch: int, shardings: BatchShardings):
    """Every test example exactly once, in order; the last batch is padded and masked."""
    num_batches = -(-split.size // global_batch)
    rows = local_rows(shardings.rows, global_batch)
    return global_batches(grain.MapDataset.range(num_batches).map(_EvalBatch(split, global_batch, rows)),
                          data_config, global_batch, shardings)


def global_batches(local: grain.MapDataset, data_config, global_batch: int, shardings: BatchShardings):
    """An iterator of global jax.Array batches from `local` (batch k -> this process's rows of it, as
    numpy), read in data.num_threads threads and prefetched onto the devices."""
    return iter(_run(local, data_config, _ToGlobal(shardings, global_batch)))
