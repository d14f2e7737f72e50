"""Batches as global jax.Arrays, each process reading only its own rows.

Training: global batch k is rows [k*B, (k+1)*B) of an endless stream of per-epoch permutations (Grain's
`shuffle().repeat()` index dataset), so it depends on (seed, k) only: not on the mesh, not on the number
of processes, and resuming at step k needs no saved iterator.
Evaluation: the test split in order, exactly once; the last batch is padded and masked.
"""
from collections.abc import Iterator

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxdist.data.sources import Split


def local_rows(sharding: NamedSharding, global_batch: int) -> slice:
    """The contiguous rows of a global batch that this process's devices hold.

    `sharding` splits dim 0 only (a one-entry PartitionSpec), so it fits images, labels and masks alike.
    """
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map((global_batch,)).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(global_batch if rows.stop is None else rows.stop)
    return slice(min(starts), max(stops))


def to_global(sharding: NamedSharding, local: np.ndarray, global_batch: int) -> jax.Array:
    return jax.make_array_from_process_local_data(sharding, local, (global_batch, *local.shape[1:]))


class TrainBatches:
    def __init__(self, split: Split, global_batch: int, seed: int, sharding: NamedSharding):
        self._split, self._batch, self._sharding = split, global_batch, sharding
        self._indices = grain.MapDataset.range(split.size).shuffle(seed=seed).repeat().batch(global_batch)
        self._rows = local_rows(sharding, global_batch)

    def indices(self, step: int) -> np.ndarray:
        """Example ids of global batch `step` (all processes' rows)."""
        return self._indices[step]

    def __call__(self, step: int) -> dict[str, jax.Array]:
        images, labels = self._split.get(self.indices(step)[self._rows])
        return {"images": to_global(self._sharding, images, self._batch),
                "labels": to_global(self._sharding, labels, self._batch)}


def eval_batches(split: Split, global_batch: int, sharding: NamedSharding) -> Iterator[dict[str, jax.Array]]:
    """Every test example exactly once; padded rows carry mask 0 and repeat example 0's pixels."""
    rows = local_rows(sharding, global_batch)
    for start in range(0, split.size, global_batch):
        ids = np.arange(start, start + global_batch)[rows]
        valid = ids < split.size
        images, labels = split.get(np.where(valid, ids, 0))
        yield {"images": to_global(sharding, images, global_batch),
               "labels": to_global(sharding, labels, global_batch),
               "mask": to_global(sharding, valid.astype(np.float32), global_batch)}
