"""CIFAR and MNIST from their raw downloads (data.path), written by the test in the real formats."""
import gzip
import json
import os
import pickle

import numpy as np
import pytest

from jaxdist.data import raw, sources
from jaxdist.errors import ConfigError
from tests import formats
from tests.helpers import run_cli, tiny_config

CIFAR_TRAIN, CIFAR_TEST = formats.labelled(60, 10, (32, 32, 3), 0), formats.labelled(23, 10, (32, 32, 3), 1)
C100_TRAIN, C100_TEST = formats.labelled(200, 100, (32, 32, 3), 2), formats.labelled(37, 100, (32, 32, 3), 3)
MNIST_TRAIN, MNIST_TEST = formats.labelled(512, 10, (28, 28, 1), 4), formats.labelled(100, 10, (28, 28, 1), 5)
# data_batch_k holds train[k-1::5], so reading batches 1..5 in order gives this permutation of the train split.
CIFAR10_FILE_ORDER = np.concatenate([np.arange(len(CIFAR_TRAIN[1]))[k::5] for k in range(5)])


def _assert_split(source, images, labels):
    assert source.images.dtype == np.uint8 and source.images.shape == images.shape
    np.testing.assert_array_equal(source.images, images)  # pixel for pixel: HWC from CIFAR's channel planes
    np.testing.assert_array_equal(source.labels, labels)


@pytest.mark.parametrize("layout", ["folder", "flat", "archive", "archive_file"])
def test_cifar10_python_version_in_each_layout(tmp_path, layout):
    path = formats.write_cifar_python(tmp_path, "cifar10", CIFAR_TRAIN, CIFAR_TEST, layout.removesuffix("_file"))
    if layout == "archive_file":
        path = path / "cifar-10-python.tar.gz"
    train, test, names = raw.load("cifar10", str(path))
    _assert_split(train, CIFAR_TRAIN[0][CIFAR10_FILE_ORDER], CIFAR_TRAIN[1][CIFAR10_FILE_ORDER])
    _assert_split(test, *CIFAR_TEST)
    assert names == formats.CIFAR10_NAMES


def test_cifar100_reads_fine_labels_and_their_names(tmp_path):
    path = formats.write_cifar_python(tmp_path, "cifar100", C100_TRAIN, C100_TEST, "archive")
    train, test, names = raw.load("cifar100", str(path))
    _assert_split(train, *C100_TRAIN)
    _assert_split(test, *C100_TEST)
    assert names == formats.CIFAR100_NAMES


def test_cifar_batches_repickled_by_python3_are_read_too(tmp_path):
    """Copies re-saved with Python 3's pickle (protocol 2 spells bytes as _codecs.encode calls)."""
    folder = formats.write_cifar_python(tmp_path, "cifar10", CIFAR_TRAIN, CIFAR_TEST, "flat")
    for f in ("test_batch", "batches.meta"):
        value = pickle.loads((folder / f).read_bytes(), encoding="bytes")
        (folder / f).write_bytes(pickle.dumps(value, protocol=2))
    _, test, names = raw.load("cifar10", str(folder))
    _assert_split(test, *CIFAR_TEST)
    assert names == formats.CIFAR10_NAMES


@pytest.mark.parametrize("layout", ["gz", "plain", "torchvision"])
def test_mnist_idx_files(tmp_path, layout):
    root = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    formats.write_mnist(root, MNIST_TRAIN, MNIST_TEST, gz=layout != "plain")
    train, test, names = raw.load("mnist", str(tmp_path))
    _assert_split(train, *MNIST_TRAIN)
    _assert_split(test, *MNIST_TEST)
    assert names == [str(d) for d in range(10)]


def test_fashion_mnist_idx_files_and_keras_mnist_npz(tmp_path):
    formats.write_mnist(tmp_path / "fashion", MNIST_TRAIN, MNIST_TEST)
    train, _, names = raw.load("fashion_mnist", str(tmp_path / "fashion"))
    _assert_split(train, *MNIST_TRAIN)
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot" and len(names) == 10
    (tmp_path / "keras").mkdir()
    np.savez(tmp_path / "keras" / "mnist.npz", x_train=MNIST_TRAIN[0][..., 0], y_train=MNIST_TRAIN[1],
             x_test=MNIST_TEST[0][..., 0], y_test=MNIST_TEST[1])
    _, test, _ = raw.load("mnist", str(tmp_path / "keras"))
    _assert_split(test, *MNIST_TEST)


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


class _RunsCode:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def _cifar_folder(tmp_path):
    return formats.write_cifar_python(tmp_path, "cifar10", CIFAR_TRAIN, CIFAR_TEST, "flat")


def _mnist_folder(tmp_path, gz=True):
    return formats.write_mnist(tmp_path, MNIST_TRAIN, MNIST_TEST, gz=gz)


def _relabel(path, label):
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[8] = label
    path.write_bytes(gzip.compress(bytes(content)))


# Each: (dataset, make the bad directory -> data.path, what the one line must say)
BAD_DIRECTORIES = {
    "missing folder": ("cifar10", lambda p: p / "nope", "does not exist; for data.name='cifar10' it must be"),
    "other dataset's files": ("cifar10", _mnist_folder, "holds no cifar10 files; it must be the CIFAR-10 python"),
    "cifar100 given cifar10": ("cifar100", _cifar_folder, "holds no cifar100 files"),
    "missing batch": ("cifar10", lambda p: (_cifar_folder(p) / "data_batch_4").unlink() or p,
                      "lacks data_batch_4 of the cifar10 python version"),
    "truncated batch": ("cifar10", lambda p: _truncate(_cifar_folder(p) / "data_batch_2", 5000) or p,
                        "data_batch_2 is not a readable CIFAR python batch (UnpicklingError"),
    "batch that runs code": ("cifar10", lambda p: (_cifar_folder(p) / "test_batch").write_bytes(
        pickle.dumps(_RunsCode(), protocol=2)) and p, "test_batch is not a readable CIFAR python batch"),
    "truncated archive": ("cifar10", lambda p: _truncate(formats.write_cifar_python(
        p, "cifar10", CIFAR_TRAIN, CIFAR_TEST, "archive") / "cifar-10-python.tar.gz", 30000) or p,
        "cifar-10-python.tar.gz is not a readable .tar.gz"),
    "no idx files": ("mnist", _cifar_folder, "holds no mnist IDX files; it must be a folder with train-images"),
    "missing label file": ("mnist", lambda p: (_mnist_folder(p) / "t10k-labels-idx1-ubyte.gz").unlink() or p,
                           "lacks t10k-labels-idx1-ubyte (.gz or not) of mnist"),
    "truncated gzip": ("mnist", lambda p: _truncate(_mnist_folder(p) / "train-images-idx3-ubyte.gz", 2000) or p,
                       "train-images-idx3-ubyte.gz is truncated or not gzip"),
    "truncated idx": ("fashion_mnist", lambda p: _truncate(_mnist_folder(p, gz=False) / "t10k-images-idx3-ubyte",
                                                           4000) or p,
                      "t10k-images-idx3-ubyte has 4000 bytes but its header (shape (100, 28, 28)) needs 78416"),
    "not idx": ("mnist", lambda p: (_mnist_folder(p, gz=False) / "train-labels-idx1-ubyte").write_bytes(
        b"<html>404</html>") and p, "is not an IDX file of unsigned bytes with 1 dimension(s)"),
    "cifar label out of range": ("cifar10", lambda p: formats.write_cifar_python(
        p, "cifar10", CIFAR_TRAIN, (CIFAR_TEST[0], CIFAR_TEST[1] + 10), "flat"),
        "test_batch: labels range over [10, 19] but there are 10 classes"),
    "label out of range": ("mnist", lambda p: _relabel(_mnist_folder(p) / "train-labels-idx1-ubyte.gz", 10) or p,
                           "labels range over [0, 10] but there are 10 classes"),
}


@pytest.mark.parametrize("case", sorted(BAD_DIRECTORIES))
def test_bad_directory_is_one_error_naming_what_is_wrong(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a pickle that ran code would leave its file
    name, make, expected = BAD_DIRECTORIES[case]
    with pytest.raises(ConfigError) as error:
        raw.load(name, str(make(tmp_path)))
    assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("overrides, expected", [
    ({"data.name": "digits", "data.path": "/data"}, "data.path is read only for data.name in folder, cifar10,"),
    ({"data.name": "imagenette", "data.path": "/data"}, "for a prepared tfds dataset set data.tfds_data_dir"),
    ({"data.name": "cifar10", "data.path": "/data", "data.tfds_data_dir": "/tfds"}, "not both"),
    ({"data.name": "digits", "data.tfds_data_dir": "/tfds"}, "data.tfds_data_dir is not read for data.name='digits'"),
    ({"data.name": "cifar10", "data.val_path": "/val"}, "data.val_path is read only for data.name='folder'"),
])
def test_a_location_the_source_would_ignore_is_refused(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        sources.load(tiny_config(**overrides).data)


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_shipped_mnist_config_learns_from_raw_idx_files(tmp_path, cli_env):
    """configs/mnist_resnet_dp.py on the IDX files, installed as core only: test accuracy far above chance
    after 30 steps shows that images and labels line up end to end; eval sees each test image once. The
    reader is the point, so the seeds' CNN stands in for the config's ResNet-20 (a fraction of its time to
    compile and run; the ResNets on MNIST's shape run in tests/test_every_config.py)."""
    _mnist_folder(tmp_path / "mnist")
    workdir = tmp_path / "run"
    result = run_cli(cli_env, "--config=configs/mnist_resnet_dp.py", f"--workdir={workdir}",
                     f"--config.data.path={tmp_path / 'mnist'}", "--config.model.name=cnn", "--config.total_steps=30",
                     "--config.batch_size=32", "--config.schedule.warmup_steps=3", "--config.log_every=10",
                     "--config.eval_every=30", core_only=True)
    assert result.returncode == 0, result.stderr[-3000:]
    final = [r for r in _records(workdir) if r["split"] == "eval"][-1]
    assert final["examples"] == len(MNIST_TEST[1]) and final["step"] == 30
    assert final["accuracy"] >= 0.98, final  # chance is 0.1; measured 1.0 (labels rolled by one against the images: 0.10)
    assert json.loads((workdir / "classes.json").read_text()) == [str(d) for d in range(10)]


def test_shipped_cifar_config_trains_from_the_tar_gz(tmp_path, cli_env):
    formats.write_cifar_python(tmp_path / "dl", "cifar10", CIFAR_TRAIN, CIFAR_TEST, "archive")
    workdir = tmp_path / "run"
    result = run_cli(cli_env, "--config=configs/cifar_dp.py", f"--workdir={workdir}",
                     f"--config.data.path={tmp_path / 'dl'}", "--config.total_steps=2", "--config.batch_size=16",
                     "--config.schedule.warmup_steps=1", "--config.log_every=1", core_only=True)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(workdir)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    assert [(r["step"], r["examples"]) for r in records if r["split"] == "eval"] == [(2, len(CIFAR_TEST[1]))]
    assert json.loads((workdir / "classes.json").read_text()) == formats.CIFAR10_NAMES


@pytest.mark.parametrize("config, make, expected", [
    ("configs/cifar_dp.py", lambda p: (_cifar_folder(p) / "batches.meta").unlink() or p,
     "lacks batches.meta of the cifar10 python version"),
    ("configs/mnist_resnet_dp.py", lambda p: _truncate(_mnist_folder(p) / "t10k-images-idx3-ubyte.gz", 500) or p,
     "t10k-images-idx3-ubyte.gz is truncated or not gzip"),
])
def test_bad_download_through_the_cli_is_one_line_and_touches_nothing(config, make, expected, tmp_path, cli_env):
    data, workdir = make(tmp_path / "dl"), tmp_path / "run"
    workdir.mkdir()
    result = run_cli(cli_env, f"--config={config}", f"--workdir={workdir}", f"--config.data.path={data}",
                     core_only=True)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("jaxdist: error: ") and expected in lines[0], lines[0]
    assert list(workdir.iterdir()) == []
