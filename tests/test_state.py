"""The fresh train state: init_state's cheaper compile builds the same bits as XLA's default one."""
import jax
import numpy as np
import pytest

from jaxdist.parallel import sharding as sharding_lib
from jaxdist.train import loop
from jaxdist.train import state as state_lib
from tests.helpers import tiny_config


@pytest.mark.parametrize("model,overrides", [
    ("cnn", {}),
    ("resnet8", {}),  # ResNet-20's layers and initialisers, a third of its blocks (~3x quicker to compile twice)
    ("convmixer", {"model.dim": 16, "model.depth": 2}),
    ("lstm", {"data.view": "rows", "model.hidden_size": 16}),
])
def test_init_compiled_cheaply_equals_the_default_compile(model, overrides):
    exp = loop.build_experiment(tiny_config(model, mesh={"data": 4, "model": 2}, **overrides))
    plain = state_lib.abstract_state(exp.model, exp.tx)
    shardings = sharding_lib.state_shardings(exp.model.logical_names(), plain, exp.tx, exp.mesh,
                                             exp.config.sharding_rules)
    cheap = state_lib.init_state(exp.model, exp.tx, shardings)
    default = jax.jit(state_lib.initialiser(exp.model, exp.tx), out_shardings=shardings)()
    assert jax.tree.structure(cheap) == jax.tree.structure(default)
    for path, a, b in zip(*zip(*jax.tree_util.tree_flatten_with_path(cheap)[0]), jax.tree.leaves(default)):
        assert a.sharding == b.sharding, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
