"""The non-finite guard (config.nan_policy, train/step.py, parallel/sync.py): a step whose loss or gradient
is not finite changes nothing but the step counter, in every sync mode and in the forms both the CPU and
a GPU compile, and the guard costs no copy of the train state. (That `stop` ends the run and `skip`
counts the step: tests/test_checkpoint.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdist.parallel import collectives, sync
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


def _use_forms(monkeypatch, forms: str) -> None:
    """Steps compiled from here on take the guard and gradient norm in `forms`: "cuda", as a step compiled
    for a GPU does (parallel/sync.py `_per_backend`), or "default", as the CPU's. The suite has no GPU, and
    what the forms compute does not depend on one."""
    def per_backend(cuda, default, *args):
        return (cuda if forms == "cuda" else default)(*args)
    monkeypatch.setattr(sync, "_per_backend", per_backend)


@pytest.mark.parametrize("forms", ["default", "cuda"])
@pytest.mark.parametrize("mode", MODES)
def test_a_nan_batch_leaves_the_state_bitwise_unchanged(mode, forms, monkeypatch):
    """Three good steps, then a batch of NaN images at step 4 (local_sgd's sync step; stale's queue full):
    every array but `step` is bitwise what it was, and the next good step moves the state again. Catches
    an update applied before the check, a sync step that still averages the replicas, a stale queue
    that takes the NaN gradient, and a guard that never lets a step through, in the CPU's forms (a
    lax.cond) and a GPU's (a select)."""
    _use_forms(monkeypatch, forms)
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


def _synthetic_cnn(mesh, forms, monkeypatch):
    """The CNN at 32x32, whose dense kernel (2M elements) is one of the leaves a GPU's norm reduces on its
    own, in `forms`: (experiment, compiled step)."""
    _use_forms(monkeypatch, forms)
    config = tiny_config("cnn", mesh, **MOMENTUM, nan_policy="skip")
    config.data.name = "synthetic"
    exp = loop.build_experiment(config, jax.devices()[:4])
    return exp, loop.compile_train_step(exp)["step"]


def test_a_gpus_forms_compute_what_the_cpus_do(monkeypatch):
    """Three steps in a GPU's forms (the guard a select; the small gradients' norm one reduction over their
    concatenation, the large ones' their own) give the CPU forms' losses and gradient norms, and the
    compiled step has no conditional and fewer reductions. Catches a grouped norm that drops or
    double-counts leaves (small or large), and a GPU form that is not what runs."""
    runs = {}
    for forms in ("default", "cuda"):
        exp, step = _synthetic_cnn(FOUR, forms, monkeypatch)
        hlo = step.as_text()
        state, batches, metrics = loop.init_state(exp), loop.train_batches(exp, stop=3), []
        for _ in range(3):
            state, m = step(state, next(batches))
            metrics.append((float(m["loss"]), float(m["grad_norm"])))
        runs[forms] = metrics, hlo.count(" conditional("), hlo.count(" reduce(")
    (cpu, cpu_conds, cpu_reduces), (gpu, gpu_conds, gpu_reduces) = runs["default"], runs["cuda"]
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5)
    assert (cpu_conds, gpu_conds) == (1, 0)
    # 8 parameter arrays: one reduction each on the CPU; on a GPU one for the 7 small, one for fc1's kernel.
    assert cpu_reduces - gpu_reduces == 6, (cpu_reduces, gpu_reduces)


def test_a_gpus_norm_gathers_no_gradient_split_over_devices(monkeypatch):
    """On a mesh that splits the gradients over 'model', a GPU's norm keeps one reduction per leaf: the
    step moves the same collective bytes as the CPU's. Catches a norm that concatenates split leaves,
    which gathers them onto every device first."""
    moved = {forms: collectives.collective_bytes(_synthetic_cnn(dict(data=2, model=2), forms, monkeypatch)[1].as_text())
             for forms in ("default", "cuda")}
    assert moved["cuda"] == moved["default"], moved


@pytest.mark.parametrize("platform, selects, concatenations", [("cpu", 0, 0), ("cuda", 3, 1)])
def test_the_forms_follow_the_platform_the_step_is_lowered_for(platform, selects, concatenations):
    """The guard and the norm lowered for `platform` (no GPU needed to lower for one): a GPU's program
    selects each leaf and concatenates the small gradients, the CPU's does neither. Catches the forms
    swapped, or keyed to a platform name JAX does not use."""
    leaves = {"bias": jnp.ones(3), "kernel": jnp.ones((3, 3)), "large": jnp.ones((300, 300))}
    mesh = jax.make_mesh((1,), ("data",))

    def guarded_step(finite, params):
        norm = sync._gradient_norm(params, mesh)
        return sync._update_if(finite, lambda p: (jax.tree.map(lambda x: x - norm, p),), params)

    text = jax.jit(guarded_step).trace(True, leaves).lower(lowering_platforms=(platform,)).as_text()
    assert (text.count("stablehlo.select"), text.count("stablehlo.concatenate")) == (selects, concatenations)
