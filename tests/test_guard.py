"""The non-finite guard (config.nan_policy, train/step.py, parallel/sync.py): a step whose loss or gradient
is not finite changes nothing but the step counter, in every sync mode, and the guard costs no copy of
the train state. (That `stop` ends the run and `skip` counts the step: tests/test_checkpoint.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdist.train import loop
from tests.helpers import tiny_config

FOUR = dict(data=4)
MOMENTUM = {"optimizer.name": "momentum"}  # as tests/test_sync.py, so the compiled steps are shared
MODES = {"allreduce": {}, "local_sgd": {"sync.mode": "local_sgd", "sync.every": 2},
         "stale": {"sync.mode": "stale", "sync.staleness": 2}}


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _state_bytes(tree) -> int:
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("mode", MODES)
def test_a_nan_batch_leaves_the_state_bitwise_unchanged(mode):
    """Three good steps, then a batch of NaN images at step 4 (local_sgd's sync step; stale's queue full):
    every array but `step` is bitwise what it was, and the next good step moves the state again. Catches
    an update applied before the check, a sync step that still averages the replicas, a stale queue
    that takes the NaN gradient, and a guard that never lets a step through."""
    config = tiny_config("cnn", FOUR, **MOMENTUM, nan_policy="skip", **MODES[mode])
    exp = loop.build_experiment(config, jax.devices()[:4])
    steps = loop.compile_train_step(exp)
    state, batches = loop.init_state(exp), loop.train_batches(exp, stop=5)
    for step in range(1, 4):
        state, metrics = steps[exp.sync.variant_at(step)](state, next(batches))
        assert int(metrics["nonfinite"]) == 0
    before = _host(state)
    good = next(batches)
    poisoned = {**good, "images": jax.device_put(jnp.full(good["images"].shape, jnp.nan), good["images"].sharding)}
    state, metrics = steps[exp.sync.variant_at(4)](state, poisoned)
    after = _host(state)
    assert int(metrics["nonfinite"]) == 1 and not np.isfinite(float(metrics["loss"]))
    assert int(after.pop("step")) == int(before.pop("step")) + 1
    for got, want in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(got, want)

    state, metrics = steps[exp.sync.variant_at(5)](state, good)
    assert int(metrics["nonfinite"]) == 0
    moved = jax.tree.leaves(_host(state["params"]))
    assert any(not np.array_equal(a, b) for a, b in zip(moved, jax.tree.leaves(before["params"])))


def test_the_guard_costs_no_copy_of_the_state():
    """The compiled step's temporaries with the guard and the gradient-norm metric on (the default) are
    the bare step's plus a few scalars, not plus the state: the regression a select between the new and
    the old state brings back (it kept both alive: +8.6 MB, the whole state, for this CNN at 32x32)."""
    def temp_bytes(**overrides):
        config = tiny_config("cnn", FOUR, **MOMENTUM, **overrides)
        config.data.name = "synthetic"  # 32x32x3, so the dense layer dominates the state as in CIFAR
        exp = loop.build_experiment(config, jax.devices()[:4])
        return loop.compile_train_step(exp)["step"].memory_analysis().temp_size_in_bytes, exp

    bare, _ = temp_bytes(nan_policy="off", log_grad_norm=False)
    default, exp = temp_bytes()
    assert default <= bare + 0.01 * _state_bytes(exp.abstract_state), (default, bare)
