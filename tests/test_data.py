"""Data: tfds through mock_data, exact eval coverage, per-process rows, seeded order."""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec

from jaxdist.data import pipeline, sources
from jaxdist.parallel.mesh import build_mesh
from tests.helpers import tiny_config, train_losses


@pytest.fixture(scope="module")
def batch_sharding():
    return NamedSharding(build_mesh(tiny_config(mesh=dict(data=8)).mesh), PartitionSpec("data"))


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_tfds_source_through_mock_data(name, shape):
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        data = sources.load(tiny_config(**{"data.name": name}).data)
        images, labels = data.train.get(np.arange(5))
    assert data.image_shape == shape and data.num_classes == 10 and data.train.size == 24
    assert images.shape == (5, *shape) and images.dtype == np.float32 and labels.dtype == np.int32


def test_one_train_step_on_mocked_cifar10():
    with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_CODE):
        losses, _, _ = train_losses(tiny_config("cnn", dict(data=8), **{"data.name": "cifar10"}), 2)
    assert np.all(np.isfinite(losses))


def test_eval_covers_the_split_exactly_once(batch_sharding):
    n = 37  # not a multiple of the batch: the last batch is padded and masked
    split = sources.Split(n, lambda idx: (np.asarray(idx, np.float32)[:, None, None, None], np.asarray(idx, np.int32)))
    seen = []
    for batch in pipeline.eval_batches(split, 16, batch_sharding):
        labels, mask = np.asarray(batch["labels"]), np.asarray(batch["mask"])
        seen.extend(labels[mask == 1].tolist())
    assert sorted(seen) == list(range(n))


def test_each_process_reads_its_rows_and_together_they_make_the_global_batch(batch_sharding):
    """Global batch k is fixed by (seed, k); rows split by the sharding, not by the process count."""
    split = sources.load(tiny_config().data).train
    batches = pipeline.TrainBatches(split, 16, seed=0, sharding=batch_sharding)
    assert pipeline.local_rows(batch_sharding, 16) == slice(0, 16)  # one process holds all 8 devices
    global_ids = batches.indices(3)
    halves = [global_ids[:8], global_ids[8:]]  # what 2 processes with 4 devices each would read
    assert sorted(np.concatenate(halves).tolist()) == sorted(global_ids.tolist())
    # One epoch of batches is a permutation of the split (no duplicates, nothing dropped).
    epoch = np.concatenate([batches.indices(k) for k in range(split.size // 16)])
    assert len(set(epoch.tolist())) == len(epoch)


def test_same_seed_same_batches_other_seed_other_batches(batch_sharding):
    split = sources.load(tiny_config().data).train
    a, b, c = (pipeline.TrainBatches(split, 16, seed, batch_sharding) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a.indices(5), b.indices(5))
    assert not np.array_equal(a.indices(5), c.indices(5))
    np.testing.assert_array_equal(np.asarray(a(5)["images"]), np.asarray(b(5)["images"]))


def test_digits_split_is_fixed():
    data = sources.load(tiny_config().data)
    assert (data.train.size, data.test.size, data.image_shape) == (1437, 360, (8, 8, 1))
