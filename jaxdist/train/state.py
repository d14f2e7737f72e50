"""Train state as a plain pytree, born sharded.

The NNX model is split once into static graphs and plain dicts of arrays; the step is a pure function
of `{'step', 'params', 'batch_stats', 'opt_state'}` jitted once (the model is re-assembled with
`nnx.merge` at trace time only, so NNX adds no per-step Python cost). Shapes come first
(`nnx.eval_shape`), parallel/sharding.py reads shardings off the logical names, and `init` is jitted
with those out_shardings, so no array ever exists whole on one device.
"""
import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxdist.models.registry import MODELS, options


def _construct(config, image_shape, num_classes):
    # Eager sharding off: models carry logical names only; parallel/sharding.py decides placement from the rules.
    with nnx.use_eager_sharding(False):
        return MODELS[config.model.name](num_classes=num_classes, image_shape=tuple(image_shape),
                                         rngs=nnx.Rngs(config.seed), dtype=jnp.dtype(config.dtype),
                                         **options(config.model))


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
        return logits, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    def logical_names(self) -> dict:
        """{'params': ..., 'batch_stats': ...} trees of per-dim logical names (None = unnamed)."""
        def names(v):
            return tuple(v.get_metadata().get("out_sharding") or (None,) * len(v.shape))
        return {"params": nnx.to_pure_dict(self.abstract_params, names),
                "batch_stats": nnx.to_pure_dict(self.abstract_batch_stats, names)}


def _as_state(template: nnx.State, pure: dict) -> nnx.State:
    """`pure`'s arrays in a copy of `template` (the abstract state is shared and must stay abstract)."""
    state = nnx.clone(template)
    nnx.replace_by_pure_dict(state, pure)
    return state


def abstract_state(model: Model, tx: optax.GradientTransformation) -> dict:
    params = nnx.to_pure_dict(model.abstract_params)
    return {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
            "batch_stats": nnx.to_pure_dict(model.abstract_batch_stats), "opt_state": jax.eval_shape(tx.init, params)}


def init_state(config, model: Model, tx, shardings: dict, image_shape, num_classes) -> dict:
    def init():
        _, params, stats = nnx.split(_construct(config, image_shape, num_classes), nnx.Param, nnx.BatchStat)
        params = nnx.to_pure_dict(params)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": nnx.to_pure_dict(stats),
                "opt_state": tx.init(params)}
    return jax.jit(init, out_shardings=shardings)()
