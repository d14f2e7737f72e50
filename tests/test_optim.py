"""Optimizers, schedules, weight-decay masks, clipping, accumulation and mixed precision."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdist.train import optim
from tests.helpers import tiny_config, train_losses


# Each name against optax's own transform, with hyperparameters away from optax's defaults, so that a name
# mapped to another optimizer, or a config field left unread, changes the updates.
_HYPER = {"optimizer.lr": 0.05, "optimizer.weight_decay": 0.0, "optimizer.momentum": 0.8, "optimizer.b1": 0.7,
          "optimizer.b2": 0.95, "optimizer.eps": 1e-6}
_REFERENCE = {
    "sgd": lambda: optax.sgd(0.05),
    "momentum": lambda: optax.sgd(0.05, momentum=0.8),
    "nesterov": lambda: optax.sgd(0.05, momentum=0.8, nesterov=True),
    "adamw": lambda: optax.adamw(0.05, b1=0.7, b2=0.95, eps=1e-6, weight_decay=0.0),
    "lars": lambda: optax.lars(0.05, weight_decay=0.0, momentum=0.8),
    "lamb": lambda: optax.lamb(0.05, b1=0.7, b2=0.95, eps=1e-6, weight_decay=0.0),
}


_PARAMS = {"w": jnp.arange(12.0).reshape(3, 4) / 7 - 0.5, "k": jnp.arange(6.0).reshape(2, 3) / 5 + 0.3}


def _three_updates(tx, params=_PARAMS):
    """Three steps on a quadratic with a different gradient each step (momentum and moments matter)."""
    state, updates = tx.init(params), []
    for _ in range(3):
        grads = jax.tree.map(lambda p: 2 * p + p ** 3, params)
        step, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, step)
        updates.append(step)
    return updates


@pytest.mark.parametrize("name", sorted(_REFERENCE))
def test_each_optimizer_name_is_that_optimizer_with_the_configs_hyperparameters(name):
    config = tiny_config(**{"optimizer.name": name, "schedule.name": "constant", **_HYPER})
    ours, reference = _three_updates(optim.build(config)), _three_updates(_REFERENCE[name]())
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    others = [n for n in _REFERENCE if n != name]
    for other in others:  # the references themselves tell the names apart
        assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(ours),
                                                           jax.tree.leaves(_three_updates(_REFERENCE[other]()))))


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


# Weight decay and its mask with every optimizer: the references above run without decay.
_DECAY_MASK = {"kernel": True, "conv": True, "bias": False}
_DECAYED = {
    "sgd": lambda: optax.chain(optax.add_decayed_weights(0.01, mask=_DECAY_MASK), optax.sgd(0.05)),
    "momentum": lambda: optax.chain(optax.add_decayed_weights(0.01, mask=_DECAY_MASK), optax.sgd(0.05, momentum=0.8)),
    "nesterov": lambda: optax.chain(optax.add_decayed_weights(0.01, mask=_DECAY_MASK),
                                    optax.sgd(0.05, momentum=0.8, nesterov=True)),
    "adamw": lambda: optax.adamw(0.05, b1=0.7, b2=0.95, eps=1e-3, weight_decay=0.01, mask=_DECAY_MASK),
    "lars": lambda: optax.lars(0.05, weight_decay=0.01, weight_decay_mask=_DECAY_MASK, trust_ratio_mask=_DECAY_MASK,
                               momentum=0.8),
    "lamb": lambda: optax.lamb(0.05, b1=0.7, b2=0.95, eps=1e-3, weight_decay=0.01, mask=_DECAY_MASK),
}


_WITH_BIAS = {"kernel": jnp.arange(12.0).reshape(3, 4) / 7 - 0.5, "conv": jnp.arange(24.0).reshape(2, 2, 2, 3) / 9,
              "bias": jnp.arange(4.0) / 3 + 0.2}  # decayed, decayed, not decayed


@pytest.mark.parametrize("name", sorted(_DECAYED))
def test_each_optimizer_decays_kernels_only(name):
    config = tiny_config(**{"optimizer.name": name, "schedule.name": "constant", **_HYPER,
                            "optimizer.weight_decay": 0.01, "optimizer.eps": 1e-3})  # eps: none of optax's defaults
    ours, reference = _three_updates(optim.build(config), _WITH_BIAS), _three_updates(_DECAYED[name](), _WITH_BIAS)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    undecayed = _three_updates(optim.build(tiny_config(**{"optimizer.name": name, "schedule.name": "constant",
                                                           **_HYPER, "optimizer.eps": 1e-3})), _WITH_BIAS)
    assert not np.allclose(ours[-1]["kernel"], undecayed[-1]["kernel"])  # the decay is applied at all


def test_decay_mask_is_more_than_one_dimension():
    params = {"scalar": jnp.zeros(()), "bias": jnp.zeros((3,)), "kernel": jnp.zeros((2, 3)),
              "conv": jnp.zeros((3, 3, 2, 4))}
    assert optim.decay_mask(params) == {"scalar": False, "bias": False, "kernel": True, "conv": True}


def test_unknown_names_are_refused_also_past_validation():
    from jaxdist.errors import ConfigError
    with pytest.raises(ConfigError, match=r"^unknown schedule.name 'linear'$"):
        optim.schedule(tiny_config(**{"schedule.name": "linear"}))
    with pytest.raises(ConfigError, match=r"^unknown optimizer.name 'adam'$"):
        optim.build(tiny_config(**{"optimizer.name": "adam"}))


def test_peak_lr_scales_linearly_with_batch():
    assert optim.peak_lr(tiny_config()) == pytest.approx(0.01)  # lr_base_batch 0: as configured
    assert optim.peak_lr(tiny_config(**{"optimizer.lr_base_batch": 64})) == pytest.approx(0.0025)  # batch 16
    assert optim.peak_lr(tiny_config(**{"optimizer.lr_base_batch": 16, "batch_size": 64})) == pytest.approx(0.04)


def _values(config, steps):
    sched = optim.schedule(config)
    return np.asarray([float(sched(i)) for i in steps])


def test_constant_schedule_with_and_without_warmup():
    assert np.allclose(_values(tiny_config(), [0, 5, 9]), 0.01)
    warm = tiny_config(**{"schedule.warmup_steps": 4, "optimizer.lr": 0.1})
    np.testing.assert_allclose(_values(warm, [0, 1, 2, 4, 9]), [0.0, 0.025, 0.05, 0.1, 0.1], rtol=1e-6)


def test_cosine_schedule_decays_to_the_final_fraction_after_the_warmup():
    c = tiny_config(**{"schedule.name": "cosine", "schedule.warmup_steps": 2, "total_steps": 10,
                       "schedule.final_lr_fraction": 0.2, "optimizer.lr": 1.0})
    expected = [0.0, 0.5, 1.0] + [0.2 + 0.8 * 0.5 * (1 + np.cos(np.pi * k / 8)) for k in range(1, 9)]
    np.testing.assert_allclose(_values(c, range(11)), expected, rtol=1e-5, atol=1e-7)
    # A warmup longer than the run is clipped to it (config.warmup_steps): the run only warms up.
    clipped = tiny_config(**{"schedule.name": "cosine", "schedule.warmup_steps": 50, "total_steps": 10,
                             "optimizer.lr": 1.0})
    np.testing.assert_allclose(_values(clipped, [0, 5, 9]), [0.0, 0.5, 0.9], rtol=1e-6)


def test_step_schedule_decays_at_its_fractions_counted_from_the_start_of_the_run():
    c = tiny_config(**{"schedule.name": "step", "total_steps": 100, "schedule.warmup_steps": 10,
                       "schedule.decay_steps_fraction": (0.5, 0.8), "schedule.decay_factor": 0.5, "optimizer.lr": 1.0})
    # Boundaries at steps 50 and 80 of the run (40 and 70 steps into the main schedule).
    np.testing.assert_allclose(_values(c, [0, 5, 10, 49, 50, 79, 80, 99]),
                               [0.0, 0.5, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25], rtol=1e-6)


def test_no_clipping_when_clip_norm_is_zero():
    config = tiny_config(**{"optimizer.name": "sgd", "optimizer.lr": 1.0, "optimizer.weight_decay": 0.0})
    params = {"w": jnp.zeros((10,))}
    tx = optim.build(config)
    updates, _ = tx.update({"w": jnp.full((10,), 100.0)}, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -100.0)
    clipped = optim.build(tiny_config(**{"optimizer.name": "sgd", "optimizer.lr": 1.0, "optimizer.clip_norm": 2.5,
                                         "optimizer.weight_decay": 0.0}))
    updates, _ = clipped.update({"w": jnp.full((10,), 100.0)}, clipped.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -2.5 / np.sqrt(10), rtol=1e-5)  # clipped, then the step
