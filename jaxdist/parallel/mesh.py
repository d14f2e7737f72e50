"""The one place that builds the device mesh.

Axes are *Auto* (GSPMD propagation), not JAX 0.10's default *Explicit*: our models name only logical
axes and know nothing of the mesh, and the step pins shardings where it matters (params, optimizer
state, the batch) through jit's in/out shardings. Under Explicit axes every reshape, pooling and
indexing op in a model would need an `out_sharding`, which would leak the mesh into model code.

Partitioner: GSPMD, not JAX 0.10's default Shardy. With Shardy, the seeds' CNN on a data=2 x fsdp=2 x
model=2 mesh gets a first-conv kernel gradient that is 80% off (forward pass right, so the loss looks
fine at first); GSPMD matches the single-device gradient to 5e-7. tests/test_sharding_invariance.py
is the check: flip this once that test passes with Shardy (docs/parallelism.md, "Partitioner").
"""
import math

import jax
from jax.sharding import AxisType, Mesh

from jaxdist.config import MESH_AXES
from jaxdist.errors import ConfigError


def mesh_shape(mesh_config, device_count: int) -> dict[str, int]:
    """Resolve -1 and check that the axis sizes use exactly the devices there are."""
    sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    described = " ".join(f"{a}={s}" for a, s in sizes.items())
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise ConfigError(f"mesh {described}: sizes must be positive, with at most one -1 (all devices left)")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if device_count % fixed:
            raise ConfigError(f"mesh {described}: the fixed axes use {fixed} devices, which does not divide "
                              f"the {device_count} available; choose sizes whose product divides {device_count}")
        sizes[free[0]] = device_count // fixed
    elif fixed != device_count:
        raise ConfigError(f"mesh {described} uses {fixed} devices but {device_count} are available; "
                          f"make the product {device_count} (or set one axis to -1)")
    return sizes


def build_mesh(mesh_config, devices=None) -> Mesh:
    jax.config.update("jax_use_shardy_partitioner", False)  # see the module docstring
    devices = jax.devices() if devices is None else devices
    sizes = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def describe(mesh: Mesh) -> str:
    return " ".join(f"{a}={n}" for a, n in mesh.shape.items())


def is_primary() -> bool:
    """Process 0 alone prints progress and writes logs and metrics."""
    return jax.process_index() == 0
