"""Logical axis names and the rules that map them onto mesh axes.

Models only ever name logical axes (the table below); `sharding_rules` in the config turns them into
mesh axes. That keeps one model file valid for DP, FSDP, TP and every hybrid.

| logical  | what it labels                                   | default mesh axes |
|----------|--------------------------------------------------|-------------------|
| batch    | the example dimension of inputs and activations  | data, fsdp        |
| height   | activation rows (spatial parallelism)            | spatial           |
| conv_in  | input channels of a conv kernel                  | fsdp              |
| conv_out | output channels of a conv kernel, norm params    | model             |
| embed    | input features of a dense layer                  | fsdp              |
| hidden   | hidden units of a dense or recurrent layer       | model             |
| classes  | output classes                                   | (replicated)      |
| layers   | a stack of identical blocks (pipeline stages)    | stage             |
"""
import math
from collections.abc import Sequence

from jax.sharding import Mesh, PartitionSpec

LogicalNames = Sequence[str | None]
Rules = Sequence[tuple[str, str | Sequence[str] | None]]

DEFAULT_RULES: tuple = (
    ("batch", ("data", "fsdp")),
    ("height", "spatial"),
    ("conv_in", "fsdp"),
    ("conv_out", "model"),
    ("embed", "fsdp"),
    ("hidden", "model"),
    ("classes", None),
    ("layers", "stage"),
)


def mesh_axes_for(logical: str | None, rules: Rules) -> tuple[str, ...]:
    """Mesh axes a logical name maps to (first matching rule wins, like flax's logical_axis_rules)."""
    if logical is None:
        return ()
    for name, axes in rules:
        if name == logical:
            if axes is None:
                return ()
            return (axes,) if isinstance(axes, str) else tuple(axes)
    return ()


def logical_to_spec(names: LogicalNames, shape: Sequence[int], rules: Rules, mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dims carry logical `names`.

    A mesh axis is used at most once per array, size-1 axes are dropped (they split nothing), and a dim
    that the axes' product does not divide stays replicated (e.g. 3 input channels under fsdp=8):
    placement changes, the math does not. `unsplit_dims` reports those for the sharding table.
    """
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape, strict=True):
        axes = [a for a in mesh_axes_for(name, rules) if a not in used and mesh.shape[a] > 1]
        if not axes or size % math.prod(mesh.shape[a] for a in axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


def unsplit_dims(names: LogicalNames, shape: Sequence[int], spec: PartitionSpec,
                 rules: Rules, mesh: Mesh) -> list[str]:
    """Logical dims that the rules wanted split but `logical_to_spec` had to replicate."""
    out = []
    for name, size, got in zip(names, shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        wanted = [a for a in mesh_axes_for(name, rules) if mesh.shape[a] > 1]
        if wanted and got is None:
            out.append(f"{name}={size}")
    return out
