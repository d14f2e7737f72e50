"""parallel/rules.py in-process: how logical names resolve to mesh axes, and which dims stay unsplit."""
import jax
import pytest
from jax.sharding import PartitionSpec

from jaxdist.config import DEFAULT_RULES
from jaxdist.parallel import rules as rules_lib
from jaxdist.parallel.mesh import build_mesh
from tests.helpers import tiny_config

RULES = (("a", "fsdp"), ("b", ("model", "fsdp")), ("none", None), ("a", "model"), ("c", ["data", "model"]))


def _mesh(**sizes):
    return build_mesh(tiny_config(mesh=sizes).mesh)


def test_mesh_axes_for_first_matching_rule_wins():
    assert rules_lib.mesh_axes_for("a", RULES) == ("fsdp",)  # a later ('a', 'model') does not count
    assert rules_lib.mesh_axes_for("b", RULES) == ("model", "fsdp")
    assert rules_lib.mesh_axes_for("c", RULES) == ("data", "model")  # a list is a tuple of axes
    assert rules_lib.mesh_axes_for("none", RULES) == ()
    assert rules_lib.mesh_axes_for("unknown", RULES) == ()
    assert rules_lib.mesh_axes_for(None, RULES) == ()
    assert rules_lib.mesh_axes_for(None, (("x", "data"),)) == ()
    assert rules_lib.mesh_axes_for("batch", DEFAULT_RULES) == ("data", "fsdp")


@pytest.mark.parametrize("sizes, names, shape, spec, unsplit", [
    (dict(fsdp=8), ("a", "b"), (16, 16), ("fsdp", None), []),  # an axis splits an array once (b wants no other)
    (dict(fsdp=4, model=2), ("b",), (8,), (("model", "fsdp"),), []),  # both axes divide: a tuple
    (dict(fsdp=4, model=2), ("b",), (6,), ("model",), []),  # the longest dividing prefix: a single name
    (dict(fsdp=4, model=2), ("b",), (4,), ("model",), []),  # 4 % 8: drop fsdp; 4 % 2 == 0
    (dict(fsdp=2, model=4), ("b",), (6,), (None,), ["b=6"]),  # 6 % 8, 6 % 4: nothing divides
    (dict(fsdp=8), ("a",), (3,), (None,), ["a=3"]),  # nothing divides: replicated, and reported
    (dict(fsdp=8), ("a",), (8,), ("fsdp",), []),  # exactly divisible
    (dict(fsdp=2, data=4), ("a",), (3,), (None,), ["a=3"]),  # an axis of size 2 is wanted too
    (dict(data=8), ("a",), (16,), (None,), []),  # size-1 axes split nothing, and are not "wanted"
    (dict(fsdp=2, model=4), ("b",), (2,), (None,), ["b=2"]),  # model=4 does not divide 2: no prefix left
    (dict(fsdp=8), ("none", "a"), (8, 8), (None, "fsdp"), []),  # a None rule is not an unsplit dim
    (dict(fsdp=8), (None, "a"), (8, 8), (None, "fsdp"), []),
    (dict(fsdp=2, model=2, data=2), ("c", "b"), (4, 4), (("data", "model"), "fsdp"), []),  # b loses model to c
    (dict(fsdp=8), ("a", "a"), (3, 16), (None, "fsdp"), ["a=3"]),  # an unsplit dim does not use its axis up
])
def test_logical_to_spec_and_unsplit_dims(sizes, names, shape, spec, unsplit):
    mesh = _mesh(**sizes)
    assert rules_lib.logical_to_spec(names, shape, RULES, mesh) == PartitionSpec(*spec)
    assert rules_lib.unsplit_dims(names, shape, RULES, mesh) == unsplit


def test_names_and_shape_must_have_the_same_length():
    with pytest.raises(ValueError):
        rules_lib.logical_to_spec(("a",), (8, 8), RULES, _mesh(fsdp=8))
    with pytest.raises(ValueError):
        rules_lib.unsplit_dims(("a", "b"), (8,), RULES, _mesh(fsdp=8))


def test_spec_shards_a_real_array():
    mesh = _mesh(fsdp=4, model=2)
    spec = rules_lib.logical_to_spec(("b", "a"), (8, 4), RULES, mesh)
    x = jax.device_put(jax.numpy.zeros((8, 4)), jax.sharding.NamedSharding(mesh, spec))
    assert x.addressable_shards[0].data.shape == (1, 4)
