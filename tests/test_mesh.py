"""parallel/mesh.py in-process: axis sizes from the config, the refusals, and the mesh it builds."""
import jax
import pytest
from jax.sharding import AxisType

from jaxdist.config import MESH_AXES
from jaxdist.errors import ConfigError
from jaxdist.parallel import mesh as mesh_lib


def _sizes(**given):
    return {**dict(stage=1, data=1, fsdp=1, spatial=1, model=1), **given}


@pytest.mark.parametrize("given, devices, expected", [
    (dict(data=-1), 8, dict(data=8)),
    (dict(data=-1, model=2), 8, dict(data=4, model=2)),
    (dict(stage=2, data=2, fsdp=2), 8, dict(stage=2, data=2, fsdp=2)),
    (dict(model=-1, data=4), 8, dict(model=2, data=4)),
    (dict(data=-1, fsdp=8), 8, dict(data=1, fsdp=8)),  # -1 may take 1
    (dict(data=1), 1, dict()),
    (dict(data=3), 3, dict(data=3)),
])
def test_mesh_shape_resolves_minus_one(given, devices, expected):
    got = mesh_lib.mesh_shape(_sizes(**given), devices)
    assert got == _sizes(**expected) and list(got) == list(MESH_AXES)
    assert all(type(n) is int for n in got.values())  # sizes, not 8.0: jax.make_mesh and the report take them


def test_missing_axes_default_to_one():
    assert mesh_lib.mesh_shape({"data": -1}, 8) == _sizes(data=8)
    assert mesh_lib.mesh_shape({"fsdp": 4}, 4) == _sizes(fsdp=4)


@pytest.mark.parametrize("given, devices, message", [
    (dict(data=-1, model=-1), 8,
     "mesh stage=1 data=-1 fsdp=1 spatial=1 model=-1: sizes must be positive, with at most one -1 (all devices left)"),
    (dict(data=0), 8, "mesh stage=1 data=0 fsdp=1 spatial=1 model=1: sizes must be positive"),
    (dict(data=-2), 8, "mesh stage=1 data=-2 fsdp=1 spatial=1 model=1: sizes must be positive"),
    (dict(data=-1, model=3), 8,
     "mesh stage=1 data=-1 fsdp=1 spatial=1 model=3: the fixed axes use 3 devices, which does not divide the 8 "
     "available; choose sizes whose product divides 8"),
    (dict(data=4), 8, "mesh stage=1 data=4 fsdp=1 spatial=1 model=1 uses 4 devices but 8 are available; "
                      "make the product 8 (or set one axis to -1)"),
    (dict(data=4, model=4), 8, "uses 16 devices but 8 are available"),
])
def test_mesh_shape_refusals(given, devices, message):
    with pytest.raises(ConfigError) as e:
        mesh_lib.mesh_shape(_sizes(**given), devices)
    assert message in str(e.value)


def test_build_mesh_uses_the_given_devices_with_auto_axes_and_gspmd():
    jax.config.update("jax_use_shardy_partitioner", True)
    try:
        mesh = mesh_lib.build_mesh(_sizes(data=-1, model=2), jax.devices()[4:])
        assert jax.config.jax_use_shardy_partitioner is False  # the module docstring: GSPMD, not Shardy
    finally:
        jax.config.update("jax_use_shardy_partitioner", False)
    assert dict(mesh.shape) == _sizes(data=2, model=2) and mesh.axis_names == MESH_AXES
    assert mesh.axis_types == (AxisType.Auto,) * 5
    assert set(mesh.devices.flat) == set(jax.devices()[4:])  # the devices given, not the first four
    assert mesh_lib.describe(mesh) == "stage=1 data=2 fsdp=1 spatial=1 model=2"
    every = mesh_lib.build_mesh(_sizes(fsdp=-1))
    assert every.devices.size == len(jax.devices()) == 8 and every.shape["fsdp"] == 8


def test_single_process_is_primary():
    assert mesh_lib.is_primary()
