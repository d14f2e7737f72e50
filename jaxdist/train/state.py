"""Train state as a plain pytree, born sharded.

The NNX model is split once into static graphs and plain dicts of arrays; the step is a pure function
of `{'step', 'params', 'batch_stats', 'opt_state'}` jitted once (the model is re-assembled with
`nnx.merge` at trace time only, so NNX adds no per-step Python cost). Shapes come first
(`nnx.eval_shape`), shardings are read off the logical names, and `init` is jitted with those
out_shardings, so no array ever exists whole on one device.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdist.models.registry import MODELS, options
from jaxdist.parallel import rules as rules_lib


def _construct(config, image_shape, num_classes):
    # Eager sharding off: models carry logical names only; placement is decided below from the rules.
    with nnx.use_eager_sharding(False):
        return MODELS[config.model.name](num_classes=num_classes, image_shape=tuple(image_shape),
                                         rngs=nnx.Rngs(config.seed), dtype=jnp.dtype(config.dtype),
                                         **options(config.model))


def _pure(state: nnx.State, leaf=lambda v: v.get_value()) -> dict:
    return traverse_util.unflatten_dict({tuple(map(str, path)): leaf(v) for path, v in nnx.to_flat_state(state)})


@dataclasses.dataclass(frozen=True)
class Model:
    """A Flax NNX model as pure functions over plain dicts of params and batch statistics."""
    train_graph: nnx.GraphDef
    eval_graph: nnx.GraphDef
    abstract_params: nnx.State
    abstract_batch_stats: nnx.State

    @classmethod
    def create(cls, config, image_shape, num_classes) -> "Model":
        abstract = nnx.eval_shape(lambda: _construct(config, image_shape, num_classes))
        train_graph, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
        abstract.eval()  # use_running_average=True lives in the graph, so eval gets its own graph
        return cls(train_graph, nnx.graphdef(abstract), params, stats)

    def apply(self, params, batch_stats, images, *, train: bool, lengths=None):
        """Logits and the batch statistics after this call (updated in training). `lengths`: valid steps
        of padded sequences (batches of variable-length data carry them), passed to the model."""
        model = nnx.merge(self.train_graph if train else self.eval_graph,
                          _as_state(self.abstract_params, params), _as_state(self.abstract_batch_stats, batch_stats))
        logits = model(images) if lengths is None else model(images, lengths=lengths)
        return logits, _pure(nnx.state(model, nnx.BatchStat))

    def logical_names(self) -> dict:
        """{'params': ..., 'batch_stats': ...} trees of per-dim logical names (None = unnamed)."""
        def names(v):
            return tuple(v.get_metadata().get("out_sharding") or (None,) * len(v.shape))
        return {"params": _pure(self.abstract_params, names), "batch_stats": _pure(self.abstract_batch_stats, names)}


def _as_state(template: nnx.State, pure: dict) -> nnx.State:
    state = nnx.clone(template)
    flat = traverse_util.flatten_dict(pure)
    for path, var in nnx.to_flat_state(state):
        var.set_value(flat[tuple(map(str, path))])
    return state


def _is_names(x):
    return isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x)


def state_shardings(model: Model, tx: optax.GradientTransformation, mesh: Mesh, rules) -> dict:
    """NamedShardings for the whole train state, from the models' logical names and the rules."""
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = abstract_state(model, tx)

    def place(names, leaf):
        return NamedSharding(mesh, rules_lib.logical_to_spec(names, leaf.shape, rules, mesh))

    names = model.logical_names()
    variables = {k: jax.tree.map(place, names[k], abstract[k], is_leaf=_is_names) for k in names}
    opt = optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], variables["params"],
                                transform_non_params=lambda _: replicated,
                                is_leaf=lambda x: isinstance(x, NamedSharding))
    return {"step": replicated, **variables, "opt_state": opt}


def abstract_state(model: Model, tx: optax.GradientTransformation) -> dict:
    params = _pure(model.abstract_params)
    return {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
            "batch_stats": _pure(model.abstract_batch_stats), "opt_state": jax.eval_shape(tx.init, params)}


def init_state(config, model: Model, tx, shardings: dict, image_shape, num_classes) -> dict:
    def init():
        _, params, stats = nnx.split(_construct(config, image_shape, num_classes), nnx.Param, nnx.BatchStat)
        params = _pure(params)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": _pure(stats),
                "opt_state": tx.init(params)}
    return jax.jit(init, out_shardings=shardings)()


def bytes_per_device(abstract: dict, shardings: dict) -> int:
    """Bytes one device holds of `abstract` under `shardings` (the largest shard of each array)."""
    sizes = jax.tree.map(lambda a, s: math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize,
                         abstract, shardings)
    return int(sum(jax.tree.leaves(sizes)))


def sharding_table(model: Model, shardings: dict, mesh: Mesh, rules) -> list[str]:
    """One line per parameter: path, shape, logical names, PartitionSpec, and dims left unsplit."""
    lines = []
    names = traverse_util.flatten_dict(model.logical_names()["params"], sep="/")
    specs = traverse_util.flatten_dict(shardings["params"], sep="/")
    shapes = traverse_util.flatten_dict(_pure(model.abstract_params), sep="/")
    for path in sorted(names):
        shape, spec = shapes[path].shape, specs[path].spec
        unsplit = rules_lib.unsplit_dims(names[path], shape, rules, mesh)
        note = f"  (replicated: {', '.join(unsplit)} not divisible)" if unsplit else ""
        lines.append(f"{path:40s} {str(shape):20s} {str(names[path]):40s} {spec}{note}")
    return lines
