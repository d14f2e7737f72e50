"""`model.width` narrows a ResNet without changing its depth: the first stage gets that many channels and
each later stage doubles them; 0 keeps the paper's widths. The config reaches the model through
models/registry.options, as the trainer builds it."""
import jax
import pytest

from jaxdist.config import base_config
from jaxdist.parallel.mesh import build_mesh
from jaxdist.train.state import Model


def _stage_widths(name: str, width: int) -> tuple[list[int], int]:
    """(output channels of each block's last conv, number of blocks) of the abstract model."""
    config = base_config()
    config.model.name, config.model.width = name, width
    mesh = build_mesh(config.mesh, jax.devices()[:1])
    params = Model.create(config, (32, 32, 3), 10, mesh).abstract_params
    blocks = params["blocks"]
    last = "conv3" if "conv3" in blocks[0] else "conv2"
    return [blocks[i][last]["kernel"].shape[-1] for i in sorted(blocks)], len(blocks)


@pytest.mark.parametrize("name, width, first, blocks, expansion", [
    ("resnet20", 0, 16, 9, 1), ("resnet20", 4, 4, 9, 1), ("resnet56", 2, 2, 27, 1),
    ("resnet18", 0, 64, 8, 1), ("resnet18", 8, 8, 8, 1), ("resnet50", 0, 64, 16, 4), ("resnet50", 4, 4, 16, 4)])
def test_width_sets_the_first_stage_and_later_stages_double(name, width, first, blocks, expansion):
    widths, count = _stage_widths(name, width)
    assert count == blocks  # depth unchanged
    assert sorted(set(widths)) == [first * expansion * 2**i for i in range(len(set(widths)))]
    assert widths == sorted(widths)
