"""Flax's probes of a tracer's sharding without a walk over the traced program, which makes tracing quadratic.

Flax NNX probes `getattr(value, "sharding", None)` on every Variable assignment: each key drawn from an
`nnx.Rngs` stream while a model is built, each running average a BatchNorm updates. On a tracer that
attribute raises AttributeError, and jax 0.10.2 (the pinned one) builds the error's message by walking every
equation traced so far (`_origin_msg`), so each probe costs time in proportion to the program traced until
then: a profiled start of ResNet-50 built 856 such messages in 4 s (docs/performance.md, "Start-up").
Later JAX raises the same AttributeError without that walk; this gives the pinned one that message, and only
where the installed JAX still walks. `hasattr` and `getattr(x, "sharding", default)` answer as before.
"""
from jax._src import core


def _walks_the_trace(attribute) -> bool:
    """Later JAX answers `sharding` in Tracer.__getattr__ instead of a property: nothing to change there."""
    return isinstance(attribute, property) and "_origin_msg" in attribute.fget.__code__.co_names


def _sharding(tracer):
    raise AttributeError(f"The 'sharding' attribute is not available on {tracer._error_repr()}. "
                         "To query sharding information on tracers, use `jax.typeof(x)`.")


if _walks_the_trace(vars(core.Tracer).get("sharding")):
    core.Tracer.sharding = property(_sharding)
