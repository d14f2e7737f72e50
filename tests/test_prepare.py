"""`python -m jaxdist.data.prepare` end to end and offline: tfds' real builders turn archives in the real
formats (from --manual_dir) into ArrayRecord, jaxdist reads exactly those examples back, and the shipped
config trains on them with the core dependencies alone (no TensorFlow)."""
import collections
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from jaxdist.data import sources
from tests import formats
from tests.conftest import REPO
from tests.helpers import run_cli, tiny_config

# The MNIST builders read exactly 60,000 + 10,000 examples, so their files are full size; CIFAR's read any size.
WRITTEN = {
    "cifar10": (formats.labelled(60, 10, (32, 32, 3), 0), formats.labelled(20, 10, (32, 32, 3), 1)),
    "cifar100": (formats.labelled(200, 100, (32, 32, 3), 2), formats.labelled(40, 100, (32, 32, 3), 3)),
    "mnist": (formats.labelled(60_000, 10, (28, 28, 1), 4), formats.labelled(10_000, 10, (28, 28, 1), 5)),
}
WRITTEN["fashion_mnist"] = WRITTEN["mnist"]
ARCHIVE = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}


def _prepare(*args, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "tests" / "offline_prepare.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# Full-size MNIST files make a real-size build (TensorFlow decodes and re-encodes 140,000 images, ~100 s on 2
# cores): `python -m pytest -m slow` runs those cases (docs/testing.md); CIFAR's builder takes the small files.
FULL_SIZE = ("mnist", "fashion_mnist")


def _build(names, tmp_path_factory):
    manual, data_dir = tmp_path_factory.mktemp("downloads"), tmp_path_factory.mktemp("tfds")
    for name in names:
        train, test = WRITTEN[name]
        (manual / name).mkdir()
        if name in ARCHIVE:
            formats.write_cifar_binary_archive(manual / name / ARCHIVE[name], name, train, test)
        else:
            formats.write_mnist(manual / name, train, test)
    result = _prepare(*names, f"--data_dir={data_dir}", f"--manual_dir={manual}")
    assert result.returncode == 0, result.stderr[-3000:]
    return data_dir, result.stdout


@pytest.fixture(scope="module")
def prepared_small(tmp_path_factory):
    return _build([n for n in WRITTEN if n not in FULL_SIZE], tmp_path_factory)


@pytest.fixture(scope="module")
def prepared_full_size(tmp_path_factory):
    return _build(FULL_SIZE, tmp_path_factory)


@pytest.fixture
def prepared(request, name):
    """(tfds data_dir, prepare's stdout) of the build that holds dataset `name`."""
    return request.getfixturevalue("prepared_full_size" if name in FULL_SIZE else "prepared_small")


def _marked(name, *values):
    return pytest.param(*values, marks=pytest.mark.slow) if name in FULL_SIZE else pytest.param(*values)


def _multiset(images, labels):
    return collections.Counter(hashlib.sha1(image.tobytes() + bytes([label])).hexdigest()
                               for image, label in zip(images, labels))


@pytest.mark.parametrize("name", [_marked(name, name) for name in WRITTEN])
def test_prepare_builds_what_jaxdist_reads_back(prepared, name):
    data_dir, stdout = prepared
    assert f"prepared {name} in {data_dir}; train with --config.data.name={name} " \
           f"--config.data.tfds_data_dir={data_dir}" in stdout
    data = sources.load(tiny_config(**{"data.name": name, "data.tfds_data_dir": str(data_dir)}).data)
    for split, (images, labels) in zip((data.train, data.test), WRITTEN[name]):
        written = _multiset(images, labels)
        assert split.size == len(labels)
        if split.size <= 10_000:  # every example, in tfds' own order
            read = [split.source[i] for i in range(split.size)]
            assert _multiset([x for x, _ in read], [y for _, y in read]) == written
        else:  # MNIST's 60,000: decoding all takes 30 s; a sample of 2,000 must be among the written pairs
            ids = np.random.default_rng(0).choice(split.size, 2000, replace=False)
            read = [split.source[int(i)] for i in ids]
            assert set(_multiset([x for x, _ in read], [y for _, y in read])) <= set(written)
    expected_names = {"cifar10": formats.CIFAR10_NAMES, "cifar100": formats.CIFAR100_NAMES}.get(name)
    assert len(data.class_names) == (100 if name == "cifar100" else 10)
    if expected_names:
        assert list(data.class_names) == expected_names


# MNIST's prepared test split is the builder's full 10,000: the seeds' CNN evaluates it in seconds on CPU
# (ResNet-20 on MNIST files is trained in test_raw_data.py).
@pytest.mark.parametrize("config, name, model", [_marked("cifar10", "configs/cifar_dp.py", "cifar10", "resnet20"),
                                                 _marked("mnist", "configs/mnist_resnet_dp.py", "mnist", "cnn")])
def test_shipped_config_trains_on_the_prepared_data_without_tensorflow(prepared, config, name, model, cli_env,
                                                                       tmp_path):
    data_dir, _ = prepared
    result = run_cli(cli_env, f"--config={config}", f"--workdir={tmp_path}", f"--config.data.tfds_data_dir={data_dir}",
                     f"--config.model.name={model}", "--config.total_steps=2", "--config.batch_size=16",
                     "--config.eval_batch_size=400", "--config.schedule.warmup_steps=1", "--config.log_every=1",
                     core_only=True)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "eval"]
    assert [(r["step"], r["examples"]) for r in evals] == [(2, len(WRITTEN[name][1][1]))]
    names = formats.CIFAR10_NAMES if name == "cifar10" else [str(d) for d in range(10)]
    assert json.loads((tmp_path / "classes.json").read_text()) == names


def test_offline_without_the_archive_names_the_file_to_put_in_manual_dir(tmp_path):
    result = _prepare("cifar10", f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={tmp_path}", timeout=300)
    error = [line for line in result.stderr.splitlines() if line.startswith("jaxdist: error:")]
    assert result.returncode == 2 and len(error) == 1, result.stderr[-2000:]
    assert error[0].endswith("; without internet, put cifar-10-binary.tar.gz "
                             "(https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz) in --manual_dir=DIR "
                             "(or DIR/cifar10/)"), error[0]
    assert not (tmp_path / "tfds" / "cifar10" / "3.0.2").exists()  # nothing half-built left as if complete


def test_prepare_cli_rejects_an_unknown_name_in_one_line(cli_env):
    result = run_cli(cli_env, "cifar_10", module="jaxdist.data.prepare", timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and lines == ["jaxdist: error: unknown tfds dataset 'cifar_10'; see "
                                                "https://www.tensorflow.org/datasets/catalog for names"]
