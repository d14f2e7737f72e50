"""jaxdist.bench with one default-path extra that has no config flag taken out, to price it (A/B against
plain jaxdist.bench in experiments/default_costs.sh). Not a supported mode: it patches jaxdist in-process.

    python experiments/bench_without.py accuracy --config=configs/cifar_dp.py ...   # no accuracy metric
    python experiments/bench_without.py inflight --config=configs/cifar_dp.py ...   # no in-flight limit
    python experiments/bench_without.py default_forms ...  # the guard and norm as on the CPU, on any backend
    python experiments/bench_without.py cuda_forms ...     # the guard and norm as on a GPU, on any backend
    python experiments/bench_without.py accuracy+inflight ...                       # several at once

Tiny (tests): jaxdist.bench's own size flags, e.g. `--config=configs/digits_dp.py --config.cpu_devices=1
--config.mesh.data=1 --steps=2 --warmup=1 --repeats=1`.
"""
import inspect
import sys

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


def _default_forms(cuda, default, *args):
    """On a GPU, the step as it was before the CUDA forms: the guard a lax.cond, the norm one reduction per leaf."""
    return default(*args)


def _cuda_forms(cuda, default, *args):
    """On the CPU, the step in the forms a GPU compiles (the guard a select, the small leaves' norm one
    reduction), so their HLO and semantics can be checked without a GPU."""
    return cuda(*args)


def _patch(extra: str) -> None:
    # What is patched must exist as written here, or the "without" run would silently time the default.
    if extra == "accuracy":
        assert inspect.signature(step_lib._loss_and_stats) == inspect.signature(_loss_without_accuracy)
        step_lib._loss_and_stats = _loss_without_accuracy
    elif extra == "inflight":  # never blocks: fine for bench's few steps, deadlocks XLA:CPU past ~32 in flight
        assert list(inspect.signature(loop.InflightSteps).parameters) == ["limit"]
        loop.InflightSteps.__init__.__defaults__ = (10**9,)
    elif extra in ("default_forms", "cuda_forms"):  # parallel/sync.py's NaN guard and gradient norm
        assert list(inspect.signature(sync._per_backend).parameters) == ["cuda", "default", "args"]
        sync._per_backend = _default_forms if extra == "default_forms" else _cuda_forms
    else:
        sys.exit(f"unknown extra {extra!r}; valid: accuracy, inflight, default_forms, cuda_forms "
                 f"(or several, joined by +)")


if __name__ == "__main__":
    for name in (sys.argv.pop(1) if len(sys.argv) > 1 else "").split("+"):
        _patch(name)
    app.run(bench.main, flags_parser=parse_flags)
