"""Spatial parallelism: each image's rows split over the 'spatial' mesh axis, the seeds' "sub-images
processed by sub-networks".

Only the input is placed here; GSPMD carries the height split through every convolution and inserts
the halo exchange itself (a collective-permute of the rows a kernel reaches across the cut, in both
directions, forward and backward). Reductions over height (BatchNorm statistics, global pooling) become
all-reduces over 'spatial', so statistics stay global and the result does not depend on the split.
It pays when one image's activations dominate memory (high resolution, small batch); with small
images the halo rows cost more than they save.
"""
import math

from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdist.errors import ConfigError
from jaxdist.parallel import rules as rules_lib


def image_sharding(config, mesh: Mesh, image_shape: tuple, rows: NamedSharding) -> NamedSharding:
    """Images' sharding: `rows`' batch split, plus height over the 'height' rule's mesh axes when they
    are larger than 1. Refuses inputs that have no height to split or whose height the axes do not divide."""
    axes = tuple(a for a in rules_lib.mesh_axes_for("height", config.sharding_rules) if mesh.shape[a] > 1)
    if not axes:
        return rows
    split = " x ".join(f"{a}={mesh.shape[a]}" for a in axes)
    if len(image_shape) != 3:
        raise ConfigError(f"{split} splits image rows, but the inputs are sequences of shape {tuple(image_shape)} "
                          f"(data.view={config.data.view!r}); use spatial=1, or data.view='image' with a CNN")
    parts = math.prod(mesh.shape[a] for a in axes)
    if image_shape[0] % parts:
        raise ConfigError(f"image height {image_shape[0]} is not divisible by {split}; use a spatial size that "
                          f"divides it, or set data.image_size to a multiple of {parts}")
    batch_axes = rows.spec[0] if len(rows.spec) else None
    return NamedSharding(mesh, PartitionSpec(batch_axes, axes[0] if len(axes) == 1 else axes))
