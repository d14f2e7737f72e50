"""Train state as a plain pytree, born sharded.

The NNX model is split once into static graphs and plain dicts of arrays; the step is a pure function
of `{'step', 'params', 'batch_stats', 'opt_state'}` jitted once (the model is re-assembled with
`nnx.merge` at trace time only, so NNX adds no per-step Python cost). Shapes come first
(`nnx.eval_shape`), parallel/sharding.py reads shardings off the logical names, and `init` is jitted
with those out_shardings, so no array ever exists whole on one device.
"""
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxdist.models.registry import MODELS, STACKED_MODELS, options
from jaxdist.parallel import pipeline


def _constructor(config, image_shape, num_classes, mesh) -> Callable[[], nnx.Module]:
    kwargs = dict(num_classes=num_classes, image_shape=tuple(image_shape), dtype=jnp.dtype(config.dtype),
                  **options(config.model))
    if config.model.name in STACKED_MODELS and mesh.shape["stage"] > 1:
        kwargs["stack_runner"] = pipeline.GPipe.create(config, mesh)

    def construct():
        # Eager sharding off: models carry logical names only; parallel/sharding.py decides placement.
        with nnx.use_eager_sharding(False):
            return MODELS[config.model.name](rngs=nnx.Rngs(config.seed), **kwargs)
    return construct


@dataclasses.dataclass(frozen=True)
class Model:
    """A Flax NNX model as pure functions over plain dicts of params and batch statistics."""
    construct: Callable[[], nnx.Module]  # a fresh model, initialized from config.seed
    train_graph: nnx.GraphDef
    eval_graph: nnx.GraphDef
    abstract_params: nnx.State
    abstract_batch_stats: nnx.State

    @classmethod
    def create(cls, config, image_shape, num_classes, mesh) -> "Model":
        """`mesh`: a model whose blocks are split into pipeline stages runs them through the stages."""
        construct = _constructor(config, image_shape, num_classes, mesh)
        abstract = nnx.eval_shape(construct)
        train_graph, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
        abstract.eval()  # use_running_average=True lives in the graph, so eval gets its own graph
        return cls(construct, train_graph, nnx.graphdef(abstract), params, stats)

    def apply(self, params, batch_stats, images, *, train: bool, lengths=None):
        """Logits and the batch statistics after this call (updated in training). `lengths`: valid steps
        of padded sequences (batches of variable-length data carry them), passed to the model."""
        model = nnx.merge(self.train_graph if train else self.eval_graph,
                          _as_state(self.abstract_params, params), _as_state(self.abstract_batch_stats, batch_stats))
        logits = model(images) if lengths is None else model(images, lengths=lengths)
        return logits, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    def stack_depth(self) -> int | None:
        """Blocks in the model's stack of identical blocks (params with a leading 'layers' axis), or None."""
        depths = {v.shape[0] for _, v in nnx.to_flat_state(self.abstract_params)
                  if (v.get_metadata().get("out_sharding") or (None,))[0] == "layers"}
        return depths.pop() if depths else None

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


# The initialisers' RNG (threefry, unrolled for every parameter) keeps XLA:CPU's default LLVM -O3 busy for
# seconds (ResNet-20: 9.6 s) on a program that runs once; -O2 builds the same bits (tests/test_state.py)
# 3-5x sooner. Other backends keep their defaults: their bits were not compared.
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}


def initialiser(model: Model, tx) -> Callable[[], dict]:
    """The function that builds a fresh train state (what init_state compiles)."""
    def init():
        _, params, stats = nnx.split(model.construct(), nnx.Param, nnx.BatchStat)
        params = nnx.to_pure_dict(params)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": nnx.to_pure_dict(stats),
                "opt_state": tx.init(params)}
    return init


def init_state(model: Model, tx, shardings: dict) -> dict:
    options = CPU_INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(initialiser(model, tx), out_shardings=shardings).lower().compile(options)()
