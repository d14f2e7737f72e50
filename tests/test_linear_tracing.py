"""jaxdist/models/linear_tracing.py: Flax's probes of a tracer's sharding, made while a model is built and traced,
cost no walk over the program traced so far, and JAX's other tracer errors keep naming where a value came from."""
import functools

import jax
import jax.numpy as jnp
import pytest
from jax._src import core
from jax._src.interpreters import partial_eval

from jaxdist.models import linear_tracing
from jaxdist.train import loop
from jaxdist.train import state as state_lib
from tests.helpers import tiny_config


@pytest.fixture
def walks(monkeypatch):
    """Counts the walks over the traced program (JAX's `_origin_msg`) while a test runs."""
    calls = []

    def origin_msg(tracer):
        calls.append(tracer)
        return ""
    monkeypatch.setattr(partial_eval.DynamicJaxprTracer, "_origin_msg", origin_msg)
    return calls


def test_probing_a_tracers_sharding_walks_nothing_and_answers_as_before(walks):
    def f(x):
        for _ in range(20):
            x = x * 2.0 + 1.0
        assert getattr(x, "sharding", "absent") == "absent" and not hasattr(x, "sharding")
        with pytest.raises(AttributeError, match="The 'sharding' attribute is not available on"):
            x.sharding  # noqa: B018
        return x
    jax.make_jaxpr(f)(jnp.zeros(3))
    assert walks == []


def test_building_and_tracing_a_resnet_walks_nothing(walks):
    """Each key drawn for a parameter and each BatchNorm running-average update is a Flax probe of the sharding."""
    # build_experiment builds the model under eval_shape; the initialiser builds it again, as init_state traces it.
    exp = loop.build_experiment(tiny_config("resnet8", mesh={"data": 8}, **{"model.width": 2}))
    state = jax.eval_shape(state_lib.initialiser(exp.model, exp.tx))
    logits, _ = jax.eval_shape(functools.partial(exp.model.apply, train=True), state["params"],
                               state["batch_stats"], jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
    assert logits.shape == (2, 10)
    assert walks == []


def test_other_tracer_errors_still_say_where_the_value_came_from():
    def f(x):
        y = jnp.sin(x)
        return y.committed
    with pytest.raises(jax.errors.ConcretizationTypeError, match="The error occurred while tracing the function f"):
        jax.make_jaxpr(f)(jnp.zeros(3))


def test_only_a_sharding_property_that_walks_is_replaced():
    assert linear_tracing._walks_the_trace(property(lambda tracer: tracer._origin_msg()))
    assert not linear_tracing._walks_the_trace(None)  # a JAX that answers in Tracer.__getattr__: no property
    assert not linear_tracing._walks_the_trace(vars(core.Tracer)["sharding"])  # the pinned JAX's, replaced
