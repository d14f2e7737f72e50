"""Synchronization modes (parallel/sync.py) and BatchNorm groups (parallel/bn_groups.py).

Everything runs the seeds' CNN or a one-BatchNorm probe model on 8x8 digits with global batch 16, so
that each compiled step costs seconds."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from jaxdist.config import base_config
from jaxdist.errors import ConfigError
from jaxdist.models import layers, registry
from jaxdist.parallel import bn_groups, collectives, sync
from jaxdist.train import checkpoint, loop
from jaxdist.train import step as step_lib
from tests.helpers import tiny_config

FOUR = dict(data=4)
MOMENTUM = {"optimizer.name": "momentum"}  # lr 0.01, weight decay 5e-4: tiny_config's defaults
PLAIN_SGD = {"optimizer.name": "sgd", "optimizer.weight_decay": 0.0}
# The same update as PLAIN_SGD (a trace with decay 0 adds an exact zero) but MOMENTUM's optimizer state,
# so the initial state's program (slow to compile) is shared.
MOMENTUM_FREE = {"optimizer.name": "momentum", "optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0}


def _devices(mesh):
    return jax.devices()[:int(np.prod(list(mesh.values())))]


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _leaves(tree):
    return jax.tree.leaves(_host(tree))


def _train(config, steps, mesh):
    """(losses, state, experiment) after `steps` steps: tests/helpers.train_losses without compiling the
    eval step, which these tests never run (compiling dominates their time)."""
    exp = loop.build_experiment(config, _devices(mesh))
    train_steps, state = loop.compile_train_step(exp), loop.init_state(exp)
    batches, losses = loop.train_batches(exp, stop=steps), []
    for step in range(1, steps + 1):
        state, metrics = train_steps[exp.sync.variant_at(step)](state, next(batches))
        losses.append(metrics["loss"])
    return np.asarray(jax.device_get(losses)), state, exp


@pytest.fixture(scope="module")
def allreduce():
    """The reference: 4 synchronous steps of momentum SGD on data=4."""
    losses, state, _ = _train(tiny_config("cnn", FOUR, **MOMENTUM), 4, FOUR)
    return losses, _host(state)


def test_local_sgd_every_step_is_synchronous_sgd(allreduce):
    """H=1: averaging the replicas' momentum updates equals the update of the averaged gradient (exact in
    real arithmetic for SGD and momentum, so float32 agrees to rounding). Catches a wrong average (a sum,
    one replica's copy) or gradients that never leave their replica."""
    losses, state, _ = _train(tiny_config("cnn", FOUR, **MOMENTUM, **{"sync.mode": "local_sgd"}), 4, FOUR)
    np.testing.assert_allclose(losses, allreduce[0], rtol=1e-6)
    for got, want in zip(_leaves(state["params"]), _leaves(allreduce[1]["params"])):
        assert got.shape == (4, *want.shape)
        np.testing.assert_array_equal(got[0], got[3])  # a sync step leaves the replicas equal
        np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6)


def test_stale_with_no_delay_is_allreduce_bitwise(allreduce):
    losses, state, _ = _train(tiny_config("cnn", FOUR, **MOMENTUM, **{"sync.mode": "stale"}), 4, FOUR)
    np.testing.assert_array_equal(losses, allreduce[0])
    for got, want in zip(_leaves(state["params"]), _leaves(allreduce[1]["params"])):
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def local4():
    """local_sgd H=4 on data=4: the compiled variants, and the params after step 3 and after step 4 run
    both as the sync step it is and, from a copy, as a local step."""
    config = tiny_config("cnn", FOUR, **MOMENTUM, **{"sync.mode": "local_sgd", "sync.every": 4})
    exp = loop.build_experiment(config, _devices(FOUR))
    steps = loop.compile_train_step(exp)
    state, batches = loop.init_state(exp), loop.train_batches(exp, stop=4)
    for step in range(1, 4):
        state, _ = steps[exp.sync.variant_at(step)](state, next(batches))
    after3, batch = _leaves(state["params"]), next(batches)
    unsynced, _ = steps["local"](jax.tree.map(jnp.copy, state), batch)
    synced, _ = steps["sync"](state, batch)
    return exp, steps, after3, _leaves(unsynced["params"]), _leaves(synced["params"])


def test_local_sgd_all_reduces_parameters_one_step_in_four(local4):
    """H=4: the gradient all-reduce is gone from 3 steps out of 4, and the 4th all-reduces the params once.
    (Two compiled variants, because a static HLO count cannot tell which branch of a conditional runs.)"""
    exp, steps, *_ = local4
    assert [exp.sync.variant_at(s) for s in range(1, 9)] == ["local"] * 3 + ["sync"] + ["local"] * 3 + ["sync"]
    param_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(exp.abstract_state["params"])) // 4
    local = collectives.collective_bytes(steps["local"].as_text())
    synced = collectives.collective_bytes(steps["sync"].as_text())
    assert local["total"] < 64, local  # a few scalars (loss, accuracy, norm, the optimizer's step count)
    assert param_bytes <= synced["all-reduce"] < param_bytes + 64, (synced, param_bytes)
    variants = loop.parallel_report(exp, steps)["variants"]  # what parallel_report.json says of it
    assert variants["local"]["share_of_steps"] == 0.8  # 10 steps: local except steps 4 and 8
    assert variants["local"]["collective_bytes_per_step"] == local
    assert variants["sync"]["collective_bytes_per_step"]["all-reduce"] == synced["all-reduce"]


def test_local_sgd_replicas_drift_apart_then_meet_at_their_average(local4):
    """Catches replicas that share gradients between syncs, a sync that keeps one replica's copy, and a
    sync that skips the local update it follows."""
    _, _, after3, unsynced, synced = local4
    assert all(a.shape[0] == 4 for a in after3)
    assert max(float(np.abs(a[0] - a[1]).max()) for a in after3) > 1e-4  # each replica took its own steps
    for local, average in zip(unsynced, synced):
        np.testing.assert_allclose(average, np.broadcast_to(local.mean(0), local.shape), rtol=1e-6, atol=1e-7)


def _cross_entropy_grad(exp, params, batch):
    """The gradient of the mean cross-entropy over the whole batch, computed here on one device."""
    def loss(p, images, labels):
        logits, _ = exp.model.apply(p, {}, images, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return jax.jit(jax.grad(loss))(params, np.asarray(batch["images"]), np.asarray(batch["labels"]))


def test_stale_applies_each_gradient_tau_steps_late():
    """tau=2, plain SGD (momentum 0, no weight decay): steps 1-2 move nothing; step t >= 3 applies the gradient of batch t-2 taken at
    the params step t-2 started from. Catches the fresh gradient applied, an off-by-one delay, or a
    queue that is not kept in the train state."""
    config = tiny_config("cnn", FOUR, **MOMENTUM_FREE, **{"sync.mode": "stale", "sync.staleness": 2})
    exp = loop.build_experiment(config, _devices(FOUR))
    steps = loop.compile_train_step(exp)
    state, batches = loop.init_state(exp), list(loop.train_batches(exp, stop=4))
    assert exp.abstract_state["grad_queue"]["conv1"]["kernel"].shape == (2, 3, 3, 1, 32)
    params = [_host(state["params"])]
    for step in range(1, 5):
        state, _ = steps[exp.sync.variant_at(step)](state, batches[step - 1])
        params.append(_host(state["params"]))
    lr = config.optimizer.lr
    for a, b, c in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1]), jax.tree.leaves(params[2])):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    for t in (3, 4):  # params[t-3] is where step t-2 started
        grad = _host(_cross_entropy_grad(exp, params[t - 3], batches[t - 3]))
        expected = jax.tree.map(lambda p, g: p - lr * g, params[t - 1], grad)
        for got, want in zip(jax.tree.leaves(params[t]), jax.tree.leaves(expected)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def _compile_dumping_partitioned_hlo(lowered, tmp_path):
    """(compiled step, its HLO right after SPMD partitioning): the collectives as XLA:SPMD emits them.
    XLA:CPU then widens bfloat16 all-reduces to float32 (its all-reduce-promotion pass), so the final CPU
    program cannot show them. The persistent cache is off for this compile: a cached executable dumps nothing."""
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        compiled = lowered.compile(compiler_options={
            "xla_dump_to": str(tmp_path), "xla_dump_hlo_pass_re": "spmd-partitioning", "xla_dump_hlo_as_text": True})
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
        compilation_cache.reset_cache()
    (dump,) = tmp_path.glob("*after_spmd-partitioning*.txt")
    return compiled, dump.read_text()


def test_bfloat16_gradient_all_reduce(allreduce, tmp_path):
    """The gradient crosses replicas as bfloat16, once, and rounds it: small but nonzero error."""
    exp = loop.build_experiment(tiny_config("cnn", FOUR, **MOMENTUM, **{"sync.grad_dtype": "bfloat16"}),
                                _devices(FOUR))
    batch = loop.abstract_batch(exp, exp.config.batch_size, with_mask=False)
    train_step = step_lib.make_train_step(exp.model, exp.tx, forward=exp.forward, sync=exp.sync)
    lowered = jax.jit(train_step, in_shardings=(exp.shardings, {k: v.sharding for k, v in batch.items()})).lower(
        exp.abstract_state, batch)
    compiled, partitioned = _compile_dumping_partitioned_hlo(lowered, tmp_path)

    param_count = sum(a.size for a in jax.tree.leaves(exp.abstract_state["params"]))
    shapes = re.findall(r"= (\S+) all-reduce\(", partitioned)
    bf16 = [s for s in shapes if s.startswith("bf16")]
    assert sum(collectives.shape_bytes(s) for s in bf16) == 2 * param_count, shapes  # the whole gradient
    assert all(collectives.shape_bytes(s) <= 4 for s in shapes if s not in bf16), shapes  # loss, accuracy
    moved = collectives.collective_bytes(compiled.as_text())
    assert moved["total"] < 4 * param_count + 64, moved  # reduced once (XLA:CPU does it in float32)

    # Against the float32 all-reduce after one step: the same update but for the gradient's rounding.
    start = loop.init_state(exp)
    initial = _leaves(start["params"])
    state, _ = compiled(start, next(loop.train_batches(exp, stop=1)))
    _, reference, _ = _train(tiny_config("cnn", FOUR, **MOMENTUM), 1, FOUR)
    delta = np.concatenate([(a - s).ravel() for a, s in zip(_leaves(state["params"]), initial)])
    want = np.concatenate([(a - s).ravel() for a, s in zip(_leaves(reference["params"]), initial)])
    error = np.linalg.norm(delta - want) / np.linalg.norm(want)
    assert 1e-5 < error < 1e-2, error  # bfloat16 keeps 8 significant bits: ~2^-9 relative per element


def test_a_local_sgd_checkpoint_refuses_another_data_size(tmp_path):
    """Written with 4 replicas' copies, it cannot resume on data=8 (nor as another mode): one line saying why."""
    local = {"sync.mode": "local_sgd", "sync.every": 2}
    written = loop.build_experiment(tiny_config("cnn", FOUR, **local), _devices(FOUR))
    with checkpoint.Checkpointer(f"{tmp_path}/checkpoints", 1) as ckpt:
        ckpt.save(1, loop.init_state(written), written.config, loop.train_batches(written).state())
    with checkpoint.Checkpointer(f"{tmp_path}/checkpoints", 1, read_only=True) as ckpt:
        for config, message in [
                (tiny_config("cnn", dict(data=8), **local), "sync.mode=local_sgd keeps one copy of the model per "
                 "data replica: the checkpoint holds 4, this mesh has data=8; resume on a mesh with data=4"),
                (tiny_config("cnn", dict(data=8)), "the checkpoint was written with sync.mode=local_sgd")]:
            exp = loop.build_experiment(config)
            with pytest.raises(ConfigError, match=re.escape(message)):
                ckpt.check_compatible(1, config, exp.abstract_state, exp.sync.check_checkpoint)


# --- BatchNorm groups, on a probe whose only BatchNorm normalises the input images: its statistics
# are then plain numbers of the batch, computable here with numpy.

class BatchNormProbe(nnx.Module):
    def __init__(self, *, num_classes, image_shape, rngs, dtype=jnp.float32):
        self.bn = layers.batch_norm(image_shape[-1], rngs, dtype=dtype)
        self.head = layers.dense(int(np.prod(image_shape)), num_classes, rngs, names=("embed", "classes"), dtype=dtype)

    def __call__(self, x):
        return self.head(self.bn(x).reshape(x.shape[0], -1))


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "bn_probe", BatchNormProbe)
    return lambda mesh, **overrides: _train(tiny_config("bn_probe", mesh, **PLAIN_SGD, **overrides), 1, mesh)


def _first_batch(exp):
    return np.asarray(next(loop.train_batches(exp, stop=1))["images"])


def _group_stats(images, groups):
    """The mean over `groups` groups of consecutive rows of each group's mean and (biased) variance."""
    x = images.reshape(groups, -1, images.shape[-1])
    return x.mean(1).mean(0), x.var(1).mean(0)


def _batch_stats_seen(state):
    """The statistics one step fed the running averages (which start at 0 and 1, momentum 0.9)."""
    bn = state["batch_stats"]["bn"]
    return np.asarray(bn["mean"]) / 0.1, (np.asarray(bn["var"]) - 0.9) / 0.1


@pytest.mark.parametrize("sync_overrides", [{}, {"sync.grad_dtype": "bfloat16"}], ids=["float32", "bfloat16"])
def test_bn_group_replica_uses_each_shards_statistics(probe, sync_overrides):
    """data=4: four groups of 4 rows. The variance tells per-group from global statistics apart (the mean
    of equal groups' means is the global mean). Under grad_dtype=bfloat16 each replica runs its own forward
    pass, which must not change what the groups are."""
    _, state, exp = probe(FOUR, **{"model.bn_group": "replica"}, **sync_overrides)
    images = _first_batch(exp)
    mean, var = _batch_stats_seen(state)
    want_mean, want_var = _group_stats(images, 4)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=1e-4)
    assert abs(want_var - _group_stats(images, 1)[1]) / want_var > 1e-3  # the check tells them from global


def test_bn_group_global_spans_replicas_under_bfloat16_gradients(probe):
    """Per-replica forward passes (grad_dtype=bfloat16) still normalise with the whole batch's statistics."""
    _, state, exp = probe(FOUR, **{"sync.grad_dtype": "bfloat16"})
    np.testing.assert_allclose(_batch_stats_seen(state)[1], _group_stats(_first_batch(exp), 1)[1], rtol=1e-4)


def test_bn_group_size_does_not_depend_on_the_mesh(probe):
    """Groups of 4 rows: one device holds two groups on data=2, half a group on data=8."""
    losses2, state2, exp = probe(dict(data=2), **{"model.bn_group": "4"})
    losses8, state8, _ = probe(dict(data=8), **{"model.bn_group": "4"})
    np.testing.assert_allclose(losses8, losses2, rtol=1e-6)
    want_var = _group_stats(_first_batch(exp), 4)[1]
    for state in (state2, state8):
        np.testing.assert_allclose(_batch_stats_seen(state)[1], want_var, rtol=1e-4)


# --- Refusals

def _config(**overrides):
    c = base_config()
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


@pytest.mark.parametrize("overrides, message", [
    ({"sync.mode": "async"}, "unknown sync.mode 'async'; valid: allreduce, local_sgd, stale"),
    ({"sync.grad_dtype": "float16"}, "unknown sync.grad_dtype 'float16'; valid: float32, bfloat16"),
    ({"sync.mode": "local_sgd", "sync.every": 0}, "sync.every=0 must be an integer >= 1"),
    ({"sync.mode": "stale", "sync.staleness": -1}, "sync.staleness=-1 must be an integer >= 0"),
    ({"sync.every": 4}, "sync.every=4 is read only by sync.mode=local_sgd"),
    ({"sync.staleness": 2}, "sync.staleness=2 is read only by sync.mode=stale"),
    ({"sync.mode": "local_sgd", "sync.grad_dtype": "bfloat16"}, "local_sgd has none"),
])
def test_bad_sync_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        sync.validate(_config(**overrides))


@pytest.mark.parametrize("group", ["local", "0", "-4", "2.5"])
def test_bad_bn_groups_are_refused(group):
    with pytest.raises(ConfigError, match="valid: global, replica, or a positive integer"):
        bn_groups.validate(_config(**{"model.bn_group": group}))


def test_bn_groups_that_do_not_fit_are_refused():
    with pytest.raises(ConfigError, match="model.bn_group=3 does not divide the 16 rows of a forward pass"):
        loop.build_experiment(tiny_config("resnet8", FOUR, **{"model.bn_group": "3"}), _devices(FOUR))
    with pytest.raises(ConfigError, match="model 'cnn' has no BatchNorm"):
        loop.build_experiment(tiny_config("cnn", FOUR, **{"model.bn_group": "replica"}), _devices(FOUR))
