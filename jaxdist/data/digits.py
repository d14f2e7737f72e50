"""scikit-learn's bundled 8x8 handwritten digits, read without importing scikit-learn.

`import sklearn` pulls in scipy and takes 1.5-3 s on 2 cores, the largest part of the default run's
start-up, for a 1,797-line CSV file. So the file is read from the installed package directly, and the
split is scikit-learn's `train_test_split(test_size=0.2, random_state=0, stratify=labels)` written out
(StratifiedShuffleSplit of scikit-learn 1.9): the same 1,437 train / 360 test images, which
tests/test_data.py checks against scikit-learn itself.
"""
import importlib.util
import math
import os

import numpy as np

from jaxdist.errors import ConfigError

TEST_FRACTION, SEED = 0.2, 0
FILE = os.path.join("datasets", "data", "digits.csv.gz")  # inside the sklearn package


def load() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 in 0..16, labels (1797,) int), as sklearn.datasets.load_digits."""
    sklearn = importlib.util.find_spec("sklearn")  # finds the package without running its __init__
    path = sklearn and os.path.join(sklearn.submodule_search_locations[0], FILE)
    if not path or not os.path.isfile(path):
        where = f"{path} is missing" if path else "scikit-learn is not installed"
        raise ConfigError(f"data.name=digits reads the digits that scikit-learn ships (sklearn/{FILE}), but {where}; "
                          "install jaxdist's dependencies (pip install .) or scikit-learn")
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): scikit-learn's stratified shuffle split, one split, seed 0."""
    n_test = math.ceil(TEST_FRACTION * len(labels))
    n_train = len(labels) - n_test
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(SEED)
    n_train_per_class = _approximate_mode(counts, n_train, rng)
    n_test_per_class = _approximate_mode(counts - n_train_per_class, n_test, rng)
    train, test = [], []
    for indices, n, t in zip(by_class, n_train_per_class, n_test_per_class):
        shuffled = indices.take(rng.permutation(len(indices)), mode="clip")
        train.extend(shuffled[:n])
        test.extend(shuffled[n:n + t])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of each class `draws` stratified draws take: the floor of each class's share, plus one for
    the classes with the largest remainders (ties broken by `rng`) until the total is `draws`."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1]:
        if need == 0:
            break
        (tied,) = np.where(remainder == value)
        take = min(len(tied), need)
        floored[rng.choice(tied, size=take, replace=False)] += 1
        need -= take
    return floored.astype(int)
