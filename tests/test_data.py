"""Input pipeline: tfds through mock_data, exact eval coverage, per-process rows, seeded and resumable order."""
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec

from jaxdist.data import pipeline, sources
from jaxdist.errors import ConfigError
from jaxdist.parallel.mesh import build_mesh
from jaxdist.parallel.sharding import BatchShardings
from tests.conftest import REPO
from tests.helpers import tiny_config, train_losses


@pytest.fixture(scope="module")
def batch_sharding():
    rows = NamedSharding(build_mesh(tiny_config(mesh=dict(data=8)).mesh), PartitionSpec("data"))
    return BatchShardings(rows, rows)


def _iterator(sharding, start=0, stop=20, seed=0, **data):
    config = tiny_config(**{"data.augment": "crop_flip", "data.crop_padding": 2,
                            **{f"data.{k}": v for k, v in data.items()}})
    split = sources.load(config.data).train
    return pipeline.TrainIterator(split, config.data, 16, seed, sharding, start=start, stop=stop)


def _host(batch):
    return jax.tree.map(np.asarray, batch)


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_tfds_source_through_mock_data(name, shape):
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        data = sources.load(tiny_config(**{"data.name": name, "data.augment": "crop_flip"}).data)
        image, label = data.train.source[3]
        out = data.train.transform(image, int(pipeline.example_keys(0, [3])[0]))
    assert data.image_shape == shape and data.num_classes == 10 and data.train.size == 24
    assert image.dtype == np.uint8 and out.shape == shape and out.dtype == np.float32 and 0 <= label < 10
    assert len(data.class_names) == 10


def test_one_train_step_on_mocked_cifar10():
    with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_CODE):
        losses, _, _ = train_losses(tiny_config("cnn", dict(data=8), **{"data.name": "cifar10"}), 2)
    assert np.all(np.isfinite(losses))


def test_unknown_dataset_and_unprepared_tfds_say_what_to_do():
    with pytest.raises(ConfigError, match="unknown data.name 'cifar_10'; valid: digits, synthetic, folder, ucr or"):
        sources.load(tiny_config(**{"data.name": "cifar_10"}).data)
    with pytest.raises(ConfigError, match=r"not prepared in /nonexistent.*python -m jaxdist.data.prepare cifar100"):
        sources.load(tiny_config(**{"data.name": "cifar100", "data.tfds_data_dir": "/nonexistent"}).data)


def test_eval_covers_the_split_exactly_once(batch_sharding):
    n = 37  # not a multiple of the batch: the last batch is padded and masked
    config = tiny_config()
    images = np.zeros((n, 2, 2, 1), np.float32)
    split = sources.Split(sources.ArraySource(images, np.arange(n)), sources.ImageTransform(config.data, 0, 1, False))
    seen = []
    for batch in pipeline.eval_batches(split, config.data, 16, batch_sharding):
        labels, mask = np.asarray(batch["labels"]), np.asarray(batch["mask"])
        seen.extend(labels[mask == 1].tolist())
    assert sorted(seen) == list(range(n))


def test_two_processes_read_disjoint_rows_that_cover_each_epoch(batch_sharding):
    """Process p of 2 reads rows [8p, 8p+8) of every global batch (what local_rows gives with 4 devices
    each); over one epoch their records are the whole split, none twice, and neither depends on the other."""
    it = _iterator(batch_sharding)
    assert pipeline.local_rows(batch_sharding.rows, 16) == slice(0, 16)  # one process here holds all 8 devices
    split = it._batch.split
    epoch = split.size // 16
    per_process = []
    for rows in (slice(0, 8), slice(8, 16)):
        reader = pipeline._TrainBatch(split, 16, 0, rows)
        per_process.append(np.concatenate([[reader.record(int(p)) for p in reader.positions(k)] for k in range(epoch)]))
    both = np.concatenate(per_process)
    assert len(set(per_process[0]) & set(per_process[1])) == 0
    assert len(set(both.tolist())) == len(both) == epoch * 16
    np.testing.assert_array_equal(np.concatenate([per_process[0][:8], per_process[1][:8]]), it.indices(0))


def test_resumed_iterator_gives_the_batches_of_an_uninterrupted_one(batch_sharding):
    uninterrupted = _iterator(batch_sharding)
    expected = [_host(next(uninterrupted)) for _ in range(12)]
    resumed = _iterator(batch_sharding, start=7)  # what a restore at step 7 builds, mid-epoch 0 (89 batches)
    assert resumed.state()["next_batch"] == 7
    for k in range(7, 12):
        got = _host(next(resumed))
        np.testing.assert_array_equal(got["images"], expected[k]["images"])
        np.testing.assert_array_equal(got["labels"], expected[k]["labels"])
    assert resumed.state()["next_batch"] == 12


def test_resume_refuses_a_data_state_from_other_data(batch_sharding):
    it = _iterator(batch_sharding)
    it.check_resumable(it.state())
    with pytest.raises(ConfigError, match="checkpoint has global_batch=32 but this run has 16"):
        it.check_resumable({**it.state(), "global_batch": 32})


def test_same_seed_same_batches_other_seed_other_batches(batch_sharding):
    a, b, c = (_host(next(_iterator(batch_sharding, seed=seed))) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a["images"], b["images"])
    assert not np.array_equal(a["labels"], c["labels"])


def test_threads_and_workers_do_not_change_the_batches(batch_sharding):
    reference = [_host(next(it)) for it in [_iterator(batch_sharding, num_threads=1, prefetch=0)] for _ in range(3)]
    for options in (dict(num_threads=4, prefetch=2), dict(num_threads=1, worker_count=2)):
        it = _iterator(batch_sharding, **options)
        for expected in reference:
            np.testing.assert_array_equal(_host(next(it))["images"], expected["images"])


def test_digits_split_is_fixed():
    data = sources.load(tiny_config().data)
    assert (data.train.size, data.test.size, data.image_shape) == (1437, 360, (8, 8, 1))


def test_digits_are_scikit_learns_images_and_split_without_importing_it():
    """data/digits.py reads the file and splits it as scikit-learn does, image for image and in order (the
    documented digits results were measured on scikit-learn's split), yet never imports scikit-learn."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from jaxdist.data import digits

    reference = load_digits()
    images, labels = digits.load()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)
    train, test = digits.split(labels)
    expected_train, expected_test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0,
                                                     stratify=labels)
    np.testing.assert_array_equal(train, expected_train)
    np.testing.assert_array_equal(test, expected_test)
    probe = "import sys; from jaxdist.data import sources; sources._digits(); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"


def test_digits_without_scikit_learn_is_one_line_exit_2(tmp_path, monkeypatch, cli_env):
    """The digits file comes from the installed scikit-learn: without it (a broken install), the CLI names
    what is missing and how to get it, instead of an AttributeError from deep in the data loader."""
    import subprocess
    import sys

    from jaxdist.data import digits

    workdir = tmp_path / "run"
    probe = ("import runpy, sys; from tests.core_only import _Hiding; "
             "sys.meta_path[:] = [_Hiding(f, {'sklearn'}) for f in sys.meta_path]; "
             f"sys.argv = ['jaxdist.main', '--config=configs/digits_dp.py', '--workdir={workdir}']; "
             "runpy.run_module('jaxdist.main', run_name='__main__', alter_sys=True)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=cli_env, capture_output=True, text=True,
                            timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and lines == [
        "jaxdist: error: data.name=digits reads the digits that scikit-learn ships "
        "(sklearn/datasets/data/digits.csv.gz), but scikit-learn is not installed; install jaxdist's "
        "dependencies (pip install .) or scikit-learn"], result.stderr[-2000:]
    assert not workdir.exists()
    monkeypatch.setattr(digits, "FILE", os.path.join("datasets", "data", "gone.csv.gz"))  # a scikit-learn without it
    with pytest.raises(ConfigError, match=r"\(sklearn/datasets/data/gone.csv.gz\), but /\S+/sklearn/datasets/data/"
                                          r"gone.csv.gz is missing; install jaxdist's dependencies"):
        digits.load()


def test_synthetic_labels_follow_num_classes():
    data = sources.load(tiny_config(**{"data.name": "synthetic"}).data, num_classes=3)
    labels = {data.train.source[i][1] for i in range(data.train.size)}
    assert data.num_classes == 3 and labels == {0, 1, 2}
