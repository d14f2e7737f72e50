"""Logical axis names and the rules that map them onto mesh axes.

Models only ever name logical axes (the table below); `sharding_rules` in the config turns them into
mesh axes. That keeps one model file valid for DP, FSDP, TP and every hybrid.

| logical  | what it labels                                   | default mesh axes |
|----------|--------------------------------------------------|-------------------|
| batch    | the example dimension of inputs and activations  | data, fsdp        |
| height   | activation rows (spatial parallelism)            | spatial           |
| conv_in  | input channels of a conv kernel                  | fsdp              |
| conv_out | output channels of a conv kernel, norm params    | model, fsdp       |
| embed    | input features of a dense layer                  | fsdp              |
| hidden   | hidden units of a dense or recurrent layer       | model, fsdp       |
| classes  | output classes                                   | (replicated)      |
| layers   | a stack of identical blocks (pipeline stages)    | stage             |
| replicas | local SGD's per-replica copies of the state      | data              |

`conv_out` and `hidden` fall back to fsdp when no other dim of the array took it, so FSDP shards every
parameter (ZeRO-3), the classifier head and norm scales included, while TP still splits them on model.

The default rules themselves are `config.DEFAULT_RULES` (the config holds them, so a config file can
change them).
"""
import math
from collections.abc import Sequence

from jax.sharding import Mesh, PartitionSpec

LogicalNames = Sequence[str | None]
Rules = Sequence[tuple[str, str | Sequence[str] | None]]


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


def _resolve(names: LogicalNames, shape: Sequence[int], rules: Rules, mesh: Mesh):
    """(PartitionSpec, dims left unsplit) for an array whose dims carry logical `names`.

    Each dim takes the longest prefix of its rule's mesh axes whose product divides it, skipping axes
    of size 1 and axes an earlier dim already took (a mesh axis splits an array at most once). A dim
    that wanted axes but got none stays replicated (e.g. 1 input channel under fsdp=8): placement
    changes, the math does not, and the sharding table reports it.
    """
    used: set[str] = set()
    spec, unsplit = [], []
    for name, size in zip(names, shape, strict=True):
        free = [a for a in mesh_axes_for(name, rules) if a not in used and mesh.shape[a] > 1]
        while free and size % math.prod(mesh.shape[a] for a in free):
            free.pop()
        if not free:
            spec.append(None)
            if [a for a in mesh_axes_for(name, rules) if a not in used and mesh.shape[a] > 1]:
                unsplit.append(f"{name}={size}")
            continue
        used.update(free)
        spec.append(free[0] if len(free) == 1 else tuple(free))
    return PartitionSpec(*spec), unsplit


def logical_to_spec(names: LogicalNames, shape: Sequence[int], rules: Rules, mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dims carry logical `names` (see `_resolve`)."""
    return _resolve(names, shape, rules, mesh)[0]


def unsplit_dims(names: LogicalNames, shape: Sequence[int], rules: Rules, mesh: Mesh) -> list[str]:
    """Logical dims that the rules wanted split but that no mesh axis divides."""
    return _resolve(names, shape, rules, mesh)[1]
