"""jaxdist.bench with one default-path extra that has no config flag taken out, to price it (A/B against
plain jaxdist.bench in experiments/default_costs.sh). Not a supported mode: it patches jaxdist in-process.

    python experiments/bench_without.py accuracy --config=configs/cifar_dp.py ...   # no accuracy metric
    python experiments/bench_without.py inflight --config=configs/cifar_dp.py ...   # no in-flight limit
    python experiments/bench_without.py cond --config=configs/cifar_dp.py ...       # the NaN guard as a select
    python experiments/bench_without.py norm_concat --config=... --config.mesh.data=1  # the norm in 1 reduction
    python experiments/bench_without.py cond+norm_concat ...                        # both

Tiny (tests): jaxdist.bench's own size flags, e.g. `--config=configs/digits_dp.py --config.cpu_devices=1
--config.mesh.data=1 --steps=2 --warmup=1 --repeats=1`.
"""
import inspect
import sys

import jax
import jax.numpy as jnp
import optax
from absl import app

from jaxdist import bench
from jaxdist.cli import parse_flags
from jaxdist.parallel import sync
from jaxdist.train import loop
from jaxdist.train import step as step_lib


def _loss_without_accuracy(forward, params, batch_stats, images, labels, lengths=None):
    logits, new_stats = forward(params, batch_stats, images, lengths)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
    return loss, (new_stats, jnp.zeros(()))


def _update_by_select(condition, update, *state):
    """The guard without its lax.cond: both states computed, each leaf selected (what sync._update_if avoids)."""
    if condition is None:
        return update(*state)
    return jax.tree.map(lambda new, old: jnp.where(condition, new, old), update(*state), state)


def _norm_of_concatenation(tree, ord=None, squared=False):  # pylint: disable=redefined-builtin
    """optax.tree.norm as one reduction over every leaf raveled and concatenated, not one per leaf (on a GPU
    each is a kernel). The barrier keeps the concatenation whole, at the price of writing it: XLA rewrites
    a reduce of a concatenation into one reduce per operand (it does, with the squares concatenated; tested
    in tests/test_experiment_scripts.py). One device only: raveling a leaf split over devices reshards it."""
    assert ord in (None, 2) and not squared, "only the 2-norm the step takes"
    flat = jax.lax.optimization_barrier(jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)]))
    return jnp.sqrt(jnp.sum(jnp.square(flat)))


def _patch(extra: str) -> None:
    # What is patched must exist as written here, or the "without" run would silently time the default.
    if extra == "accuracy":
        assert inspect.signature(step_lib._loss_and_stats) == inspect.signature(_loss_without_accuracy)
        step_lib._loss_and_stats = _loss_without_accuracy
    elif extra == "inflight":  # never blocks: fine for bench's few steps, deadlocks XLA:CPU past ~32 in flight
        assert list(inspect.signature(loop.InflightSteps).parameters) == ["limit"]
        loop.InflightSteps.__init__.__defaults__ = (10**9,)
    elif extra == "cond":
        assert inspect.signature(sync._update_if) == inspect.signature(_update_by_select)
        sync._update_if = _update_by_select
    elif extra == "norm_concat":
        assert list(inspect.signature(optax.tree.norm).parameters) == ["tree", "ord", "squared"]
        optax.tree.norm = _norm_of_concatenation
    else:
        sys.exit(f"unknown extra {extra!r}; valid: accuracy, inflight, cond, norm_concat (or several, joined by +)")


if __name__ == "__main__":
    for name in (sys.argv.pop(1) if len(sys.argv) > 1 else "").split("+"):
        _patch(name)
    app.run(bench.main, flags_parser=parse_flags)
