"""Pipeline parallelism (GPipe over 'stage'): the pipelined ConvMixer computes what the unpipelined one
does, each stage holds only its own blocks, stages talk by collective-permute, and bad setups are refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdist.errors import ConfigError
from jaxdist.models import convmixer, layers
from jaxdist.parallel import collectives, pipeline
from jaxdist.train import loop
from tests.helpers import tiny_config, train_losses

TINY = {"model.dim": 16, "model.depth": 4, "model.patch_size": 2, "model.kernel_size": 3, "optimizer.lr": 0.05}
MESHES = {  # name: (mesh, devices)
    "stage2": (dict(stage=2), 2),
    "stage4": (dict(stage=4), 4),
    "stage2_data2": (dict(stage=2, data=2), 4),
    "stage4_data2": (dict(stage=4, data=2), 8),
    "stage2_fsdp2": (dict(stage=2, fsdp=2), 4),
}


@pytest.fixture(scope="module")
def unpipelined():
    losses, _, _ = train_losses(tiny_config("convmixer", dict(data=1), **TINY), 10, devices=jax.devices()[:1])
    assert not np.allclose(losses[0], losses[-1]), "the model must train for the comparison to mean anything"
    return losses


@pytest.fixture(scope="module")
def runs():
    cache = {}

    def run(name):
        if name not in cache:
            mesh, devices = MESHES[name]
            cache[name] = train_losses(tiny_config("convmixer", mesh, **TINY), 10, devices=jax.devices()[:devices])
        return cache[name]
    return run


@pytest.mark.parametrize("name", sorted(MESHES))
def test_pipelined_losses_match_the_unpipelined_model(unpipelined, runs, name):
    losses, _, _ = runs(name)
    np.testing.assert_allclose(losses, unpipelined, rtol=1e-4)


def test_each_stage_holds_only_its_own_blocks(runs):
    _, state, exp = runs("stage4_data2")
    stage_axis = list(exp.mesh.shape).index("stage")
    stage_of = {d: coord[stage_axis] for coord, d in np.ndenumerate(exp.mesh.devices)}
    stacked = jax.tree.leaves(state["params"]["blocks"])
    assert stacked and all(p.shape[0] == 4 for p in stacked)
    for param in stacked:
        for device, index in param.sharding.devices_indices_map(param.shape).items():
            s = stage_of[device]
            assert range(4)[index[0]] == range(s, s + 1), (device, index)  # 4 blocks over 4 stages: block s


def test_stages_pass_activations_by_collective_permute(runs):
    _, _, exp = runs("stage2")
    assert collectives.collective_bytes(loop.compile_train_step(exp)["step"].as_text())["collective-permute"] > 0
    assert pipeline.describe(exp.config, exp.mesh).startswith("pipeline: 2 stages x 4 microbatches")
    assert pipeline.bubble_fraction(2, 4) == pytest.approx(1 / 5)


@pytest.mark.parametrize("model, mesh, devices, overrides, message", [
    ("resnet8", dict(stage=2), 2, {}, "has no stack of identical blocks"),
    ("convmixer", dict(stage=3), 3, {}, "does not divide the model's 4 blocks"),
    ("convmixer", dict(stage=2, data=2), 4, {"pipeline.microbatches": 3}, "multiple of 6"),
    ("convmixer", dict(stage=2), 2, {"pipeline.microbatches": 0}, "must be a positive integer"),
])
def test_refuses_what_it_cannot_pipeline(model, mesh, devices, overrides, message):
    with pytest.raises(ConfigError, match=message):
        loop.build_experiment(tiny_config(model, mesh, **TINY, **overrides), jax.devices()[:devices])


@pytest.mark.parametrize("kernel", [3, 4])
def test_depthwise_conv_equals_flax_grouped_conv(kernel):
    """ConvMixer's depthwise conv (shifted multiply-adds, fast on CPU) computes nnx.Conv's grouped conv."""
    with nnx.use_eager_sharding(False):
        ours = layers.DepthwiseConv(6, kernel, nnx.Rngs(0))
        flax_conv = nnx.Conv(6, 6, (kernel, kernel), feature_group_count=6, padding="SAME", rngs=nnx.Rngs(0))
    assert ours.kernel.shape == flax_conv.kernel.shape  # same layout, so checkpoints and init agree
    flax_conv.kernel[...] = ours.kernel[...]
    ours.bias[...] = flax_conv.bias[...] = jnp.arange(6.0)
    x = jax.random.normal(jax.random.key(1), (2, 7, 9, 6))
    np.testing.assert_allclose(ours(x), flax_conv(x), atol=1e-5)

    weights = jnp.arange(2 * 7 * 9 * 6.0).reshape(2, 7, 9, 6) / 100  # every output counts differently

    def grads(conv):  # d/d(kernel, x)
        graph, state = nnx.split(conv)
        d_state, d_x = jax.grad(lambda state, x: (nnx.merge(graph, state)(x) * weights).sum(), argnums=(0, 1))(state, x)
        return d_state["kernel"][...], d_x

    for ours_grad, flax_grad in zip(grads(ours), grads(flax_conv)):
        np.testing.assert_allclose(ours_grad, flax_grad, rtol=1e-5, atol=1e-4)


def test_convmixers_backward_keeps_no_shifted_copies_of_its_blocks_inputs():
    """The depthwise conv's k*k shifted slices are recomputed in the backward pass, not kept: the blocks run
    in a scan, which would stack 25 copies of each block's input for every block. Measured temporaries of
    this gradient: 24 block-sized arrays per block, 48 when the slices are kept."""
    with nnx.use_eager_sharding(False):
        model = convmixer.ConvMixer(num_classes=10, image_shape=(16, 16, 3), rngs=nnx.Rngs(0), dim=32, depth=6,
                                    patch_size=2, kernel_size=5)
    graph, params = nnx.split(model)
    images = jnp.ones((8, 16, 16, 3))
    step = jax.jit(jax.grad(lambda p: nnx.merge(graph, p)(images).sum())).lower(params).compile()
    block_activation = 8 * 8 * 8 * 32 * 4  # bytes: batch x 8 x 8 patches x dim, float32
    assert step.memory_analysis().temp_size_in_bytes < 36 * block_activation * 6
