"""Params are split as the rules say, and FSDP really divides per-device memory."""
import jax
import pytest

from jaxdist.parallel import rules as rules_lib
from jaxdist.parallel import sharding as sharding_lib
from jaxdist.parallel.mesh import build_mesh
from jaxdist.train import loop
from tests.helpers import tiny_config


def _init(mesh):
    config = tiny_config("cnn", mesh)
    exp = loop.build_experiment(config)
    state = loop.init_state(exp)
    return exp, state


@pytest.fixture(scope="module")
def states():
    return {name: _init(mesh) for name, mesh in
            {"data8": dict(data=8), "fsdp8": dict(fsdp=8), "tp": dict(data=4, model=2)}.items()}


def test_tensor_parallel_splits_output_channels_and_hidden_units(states):
    _, state = states["tp"]
    params = state["params"]
    assert params["conv2"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, None, None, "model")
    assert params["fc1"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, "model")
    assert params["head"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("model", None)
    # The arrays themselves are split: each device holds half of conv2's 64 output channels.
    assert params["conv2"]["kernel"].addressable_shards[0].data.shape == (3, 3, 32, 32)
    # Momentum follows its parameter's sharding.
    trace = state["opt_state"][1][0].trace
    assert trace["fc1"]["kernel"].sharding.spec == params["fc1"]["kernel"].sharding.spec


def test_fsdp_splits_inputs_and_leaves_indivisible_dims_replicated(states):
    _, state = states["fsdp8"]
    params = state["params"]
    assert params["fc1"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert params["conv2"]["kernel"].addressable_shards[0].data.shape == (3, 3, 4, 64)
    # conv1 has 1 input channel, which 8 devices cannot split: its output channels take fsdp instead.
    assert params["conv1"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    # The head and biases are sharded too (ZeRO-3: every parameter).
    assert params["head"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)


def test_fsdp_per_device_bytes_are_about_an_eighth_of_data_parallel(states):
    def per_device(name):
        exp, _ = states[name]
        return sum(sharding_lib.bytes_per_device(exp.abstract_state[k], exp.shardings[k])
                   for k in ("params", "opt_state"))
    ratio = per_device("fsdp8") / per_device("data8")
    assert 1 / 8 <= ratio < 0.13, ratio


def test_sharding_table_reports_unsplit_dims(states):
    exp, _ = states["fsdp8"]
    table = sharding_lib.sharding_table(exp.model.logical_names()["params"], exp.abstract_state["params"],
                                         exp.shardings["params"], exp.mesh, exp.config.sharding_rules)
    conv1 = next(line for line in table if line.startswith("conv1/kernel"))
    assert "conv_in=1 not divisible" in conv1


@pytest.mark.parametrize("mesh, names, shape, expected", [
    (dict(fsdp=8), ("a", "b"), (16, 16), ("fsdp", None)),  # an axis splits an array once
    (dict(fsdp=4, model=2), ("b",), (8,), (("model", "fsdp"),)),  # both axes divide
    (dict(fsdp=4, model=2), ("b",), (6,), ("model",)),  # longest dividing prefix
    (dict(fsdp=8), ("a",), (3,), (None,)),  # nothing divides: replicated
    (dict(data=8), ("a",), (16,), (None,)),  # size-1 axes split nothing
])
def test_logical_to_spec(mesh, names, shape, expected):
    rules = (("a", "fsdp"), ("b", ("model", "fsdp")))
    spec = rules_lib.logical_to_spec(names, shape, rules, build_mesh(tiny_config(mesh=mesh).mesh))
    assert spec == jax.sharding.PartitionSpec(*expected)
