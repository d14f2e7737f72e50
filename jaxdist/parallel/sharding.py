"""Where every array of a step lives: the train state's and the batch's shardings, read off logical
names and the config's rules, and what that placement costs each device.

The loop, the report and the planner all read placement from here, so they agree by construction.
"""
import dataclasses
import math

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdist.config import eval_batch_size
from jaxdist.errors import ConfigError
from jaxdist.parallel import rules as rules_lib


def _is_names(x):
    return isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x)


def _by_path(tree) -> dict:
    """{'blocks/0/conv1/kernel': leaf}: nested dicts (with int keys for lists, as nnx.to_pure_dict gives)."""
    return {"/".join(str(k.key) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_names)}


def state_shardings(logical_names: dict, abstract_state: dict, tx: optax.GradientTransformation, mesh: Mesh,
                    rules) -> dict:
    """NamedShardings for the whole train state. `logical_names`: {'params': ..., 'batch_stats': ...} trees
    of per-dim names (Model.logical_names()); optimizer state follows the params it belongs to."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(names, leaf):
        return NamedSharding(mesh, rules_lib.logical_to_spec(names, leaf.shape, rules, mesh))

    variables = {k: jax.tree.map(place, logical_names[k], abstract_state[k], is_leaf=_is_names)
                 for k in logical_names}
    opt = optax.tree_map_params(tx, lambda _, s: s, abstract_state["opt_state"], variables["params"],
                                transform_non_params=lambda _: replicated,
                                is_leaf=lambda x: isinstance(x, NamedSharding))
    return {"step": replicated, **variables, "opt_state": opt}


@dataclasses.dataclass(frozen=True)
class BatchShardings:
    """Where a batch's fields lie: every field splits its rows (dim 0) over the 'batch' rule's mesh axes;
    images may also split their height (parallel/spatial.py)."""
    rows: NamedSharding
    images: NamedSharding

    def of(self, field: str) -> NamedSharding:
        return self.images if field == "images" else self.rows

    def tree(self, batch: dict) -> dict:
        """{field: sharding} for a batch with these fields (jit's in_shardings for it)."""
        return {field: self.of(field) for field in batch}


def batch_axes(config, mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes that split a batch's rows: the 'batch' rule's, those larger than 1."""
    return tuple(a for a in rules_lib.mesh_axes_for("batch", config.sharding_rules) if mesh.shape[a] > 1)


def batch_shards(config, mesh: Mesh) -> int:
    """How many pieces a batch's rows are split into."""
    return math.prod(mesh.shape[a] for a in batch_axes(config, mesh))


def batch_sharding(config, mesh: Mesh) -> NamedSharding:
    """The rows of a batch split over the 'batch' rule's mesh axes; refuses sizes those axes do not divide."""
    axes, shards = batch_axes(config, mesh), batch_shards(config, mesh)
    split = " x ".join(f"{a}={mesh.shape[a]}" for a in axes) or "none"
    for name, size in (("batch_size", config.batch_size // config.optimizer.grad_accum_steps),
                       ("eval_batch_size", eval_batch_size(config))):
        if size % shards or size % jax.process_count():
            what = name if name == "eval_batch_size" or config.optimizer.grad_accum_steps == 1 else \
                f"batch_size / optimizer.grad_accum_steps ({config.batch_size}/{config.optimizer.grad_accum_steps})"
            raise ConfigError(f"{what}={size} is not divisible by the {shards} batch shards ({split}) and "
                              f"{jax.process_count()} processes; use a multiple of {math.lcm(shards, jax.process_count())}")
    return NamedSharding(mesh, PartitionSpec(axes or None))


def bytes_per_device(abstract: dict, shardings: dict) -> int:
    """Bytes one device holds of `abstract` under `shardings` (the largest shard of each array)."""
    sizes = jax.tree.map(lambda a, s: math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize,
                         abstract, shardings)
    return int(sum(jax.tree.leaves(sizes)))


def sharding_table(logical_names: dict, abstract_params: dict, param_shardings: dict, mesh: Mesh,
                   rules) -> list[str]:
    """One line per parameter: path, shape, logical names, PartitionSpec, and dims left unsplit."""
    lines = []
    names, specs, shapes = (_by_path(logical_names), _by_path(param_shardings), _by_path(abstract_params))
    for path in sorted(names):
        shape, spec = shapes[path].shape, specs[path].spec
        unsplit = rules_lib.unsplit_dims(names[path], shape, rules, mesh)
        note = f"  (replicated: {', '.join(unsplit)} not divisible)" if unsplit else ""
        lines.append(f"{path:40s} {str(shape):20s} {str(names[path]):40s} {spec}{note}")
    return lines
