"""Optimizers, schedules, weight-decay masks, clipping, accumulation and mixed precision."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdist.train import optim
from tests.helpers import tiny_config, train_losses


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adamw", "lars", "lamb"])
def test_every_optimizer_reduces_a_quadratic(name):
    config = tiny_config(**{"optimizer.name": name, "optimizer.lr": 0.05, "optimizer.weight_decay": 0.0})
    params = {"w": jnp.full((4, 4), 3.0), "b": jnp.full((4,), 3.0)}
    tx = optim.build(config)
    state = tx.init(params)
    loss = lambda p: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))
    start = loss(params)
    for _ in range(20):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = jax.tree.map(jnp.add, params, updates)
    assert loss(params) < start


def test_weight_decay_skips_biases_and_norm_scales():
    config = tiny_config(**{"optimizer.name": "sgd", "optimizer.lr": 1.0, "optimizer.weight_decay": 0.1})
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    tx = optim.build(config)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(updates["bias"][0]) == 0.0 and float(updates["kernel"][0, 0]) == pytest.approx(-0.1)


def test_schedules_warmup_cosine_step_and_linear_scaling():
    cosine = optim.schedule(tiny_config(**{"schedule.name": "cosine", "schedule.warmup_steps": 2, "total_steps": 10}))
    assert float(cosine(0)) == 0.0 and float(cosine(2)) == pytest.approx(0.01) and float(cosine(10)) < 1e-6
    step = optim.schedule(tiny_config(**{"schedule.name": "step", "total_steps": 100}))
    assert float(step(10)) == pytest.approx(0.01) and float(step(60)) == pytest.approx(0.001)
    scaled = tiny_config(**{"optimizer.lr_base_batch": 8})  # batch 16 -> 2x
    assert optim.peak_lr(scaled) == pytest.approx(0.02)


def test_clipping_bounds_the_update():
    config = tiny_config(**{"optimizer.name": "sgd", "optimizer.lr": 1.0, "optimizer.clip_norm": 1.0,
                            "optimizer.weight_decay": 0.0})
    params = {"w": jnp.zeros((10,))}
    tx = optim.build(config)
    updates, _ = tx.update({"w": jnp.full((10,), 100.0)}, tx.init(params), params)
    assert float(jnp.linalg.norm(updates["w"])) == pytest.approx(1.0, rel=1e-5)


def test_gradient_accumulation_matches_the_full_batch():
    """The CNN has no BatchNorm, so 4 micro-batches of 4 must give the batch-16 update."""
    four = jax.devices()[:4]  # micro-batches of 4 rows over 4 devices
    full, state_full, _ = train_losses(tiny_config("cnn", dict(data=4)), 3, four)
    accum, state_accum, _ = train_losses(tiny_config("cnn", dict(data=4), **{"optimizer.grad_accum_steps": 4}), 3, four)
    np.testing.assert_allclose(accum, full, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state_full["params"]), jax.tree.leaves(state_accum["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
    losses, state, _ = train_losses(tiny_config("cnn", dict(data=8), dtype="bfloat16"), 3)
    assert np.all(np.isfinite(losses))
    assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype("float32")}
