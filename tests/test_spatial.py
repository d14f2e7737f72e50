"""Spatial parallelism: image rows split over 'spatial', the halo exchange in the step, and the inputs it refuses.
(That its losses equal data parallel's is in test_sharding_invariance.py, mesh data2_spatial4.)"""
import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxdist.errors import ConfigError
from jaxdist.train import loop
from tests.helpers import tiny_config


def _permute_pairs(hlo: str) -> list[list[tuple[int, int]]]:
    """source_target_pairs of every collective-permute in the HLO, as (source, target) device ids."""
    return [[tuple(map(int, p)) for p in re.findall(r"\{(\d+),(\d+)\}", m)]
            for m in re.findall(r"collective-permute(?:-start)?\(.*?source_target_pairs=\{(.*?)\}\}", hlo)]


def test_step_exchanges_halo_rows_between_spatial_neighbours():
    exp = loop.build_experiment(tiny_config("cnn", dict(data=2, spatial=4)))
    assert exp.batch_shardings.images.spec == PartitionSpec(("data",), "spatial")
    assert exp.batch_shardings.rows.spec == PartitionSpec(("data",))  # labels are not split by rows
    hlo = loop.compile_train_step(exp)["step"].as_text()
    # Logical device id in the HLO = position in the mesh: coordinates (stage, data, fsdp, spatial, model).
    coords = {i: np.unravel_index(i, tuple(exp.mesh.shape.values())) for i in range(exp.mesh.size)}
    spatial = list(exp.mesh.shape).index("spatial")
    shifts = set()
    for pairs in _permute_pairs(hlo):
        moves = {tuple(np.subtract(coords[target], coords[source])) for source, target in pairs}
        for move in moves:  # within one image's strips, never across the batch
            assert list(np.nonzero(move)[0]) == [spatial], (pairs, move)
        if len(moves) == 1:
            shifts.add(int(moves.pop()[spatial]))
    # Halo rows go to the next strip and come back from it (a conv's kernel reaches both ways).
    assert {1, -1} <= shifts, f"no halo exchange between neighbouring strips; permutes shift by {shifts}"


@pytest.mark.parametrize("model, mesh, devices, overrides, message", [
    ("lstm", dict(data=4, spatial=2), 8, {"data.view": "rows"}, "splits image rows, but the inputs are sequences"),
    ("cnn", dict(data=2, spatial=3), 6, {}, "image height 8 is not divisible by spatial=3"),
])
def test_refuses_inputs_whose_rows_cannot_be_split(model, mesh, devices, overrides, message):
    with pytest.raises(ConfigError, match=message):
        loop.build_experiment(tiny_config(model, mesh, **overrides), jax.devices()[:devices])
