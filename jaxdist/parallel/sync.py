"""Synchronization modes: how the data replicas combine their work (`config.sync`).

| mode        | what a step does                                             | gradient-sized collectives |
|-------------|--------------------------------------------------------------|----------------------------|
| `allreduce` | average all replicas' gradients, apply them (hard sync)      | every step                 |
| `local_sgd` | each replica updates its own copy; every `every`-th step      | a parameter average every  |
|             | averages the copies (soft sync, Lin et al. 2020)             | `every` steps, no gradient |
| `stale`     | apply the averaged gradient `staleness` steps late           | every step                 |
|             | (a deterministic emulation of asynchronous parameter-server  |                            |
|             | SGD with a fixed delay)                                      |                            |

Each mode is one class with the same small interface, so the train step and the loop use any of them
without asking which: the extra train state it keeps (`names`, `shapes`, `init`), which compiled step
variant runs at a step (`variants`, `variant_at`), how a step turns gradients into an update
(`update`), the model a checkpoint or evaluation sees (`model_variables`, `check_checkpoint`), and
how many forward passes a step runs side by side (`copies`, `stats_axis`, read by bn_groups.py).

"Replicas" are the indices of the `data` mesh axis: the state is replicated over `data` and split over
the other axes (fsdp, model), so one replica spans data=1 x fsdp x spatial x model devices. Per-replica
work (local SGD's steps, bfloat16 gradients) runs in a shard_map that is manual over 'data' only.
docs/parallelism.md, "Synchronization modes", has the semantics and measurements.
"""
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from jaxdist.config import check_choice
from jaxdist.errors import ConfigError
from jaxdist.parallel import rules as rules_lib

MODES = ("allreduce", "local_sgd", "stale")
GRAD_DTYPES = ("float32", "bfloat16")
REPLICAS = "replicas"  # the logical name of local SGD's leading state dim (rule: -> 'data')


def validate(config) -> None:
    """One line for each mistake, including options the chosen mode would silently ignore."""
    s = config.sync
    check_choice("sync.mode", s.mode, MODES)
    check_choice("sync.grad_dtype", s.grad_dtype, GRAD_DTYPES)
    if not isinstance(s.every, int) or s.every < 1:
        raise ConfigError(f"sync.every={s.every!r} must be an integer >= 1 (local steps between parameter averages)")
    if not isinstance(s.staleness, int) or s.staleness < 0:
        raise ConfigError(f"sync.staleness={s.staleness!r} must be an integer >= 0 (steps a gradient is applied late)")
    if s.every != 1 and s.mode != "local_sgd":
        raise ConfigError(f"sync.every={s.every} is read only by sync.mode=local_sgd, not {s.mode!r}; "
                          f"set --config.sync.mode=local_sgd or leave sync.every=1")
    if s.staleness and s.mode != "stale":
        raise ConfigError(f"sync.staleness={s.staleness} is read only by sync.mode=stale, not {s.mode!r}; "
                          f"set --config.sync.mode=stale or leave sync.staleness=0")
    if s.grad_dtype != "float32" and s.mode == "local_sgd":
        raise ConfigError(f"sync.grad_dtype={s.grad_dtype} sets the gradient all-reduce's dtype, and local_sgd has "
                          f"none (it averages parameters every sync.every steps); leave sync.grad_dtype=float32")


def build(config, mesh):
    """The configured mode's strategy for `mesh` (config already validated)."""
    s = config.sync
    if s.mode == "local_sgd":
        if rules_lib.mesh_axes_for(REPLICAS, config.sharding_rules) != ("data",):
            raise ConfigError(f"sync.mode=local_sgd keeps one copy of the state per data replica, which needs the "
                              f"sharding rule ({REPLICAS!r}, 'data'); add it to sharding_rules")
        return LocalSGD(mesh, s.every)
    if s.mode == "stale":
        return Stale(mesh, jnp.dtype(s.grad_dtype), s.staleness)
    return AllReduce(mesh, jnp.dtype(s.grad_dtype))


def _per_replica(mesh, fn, in_specs, out_specs):
    """`fn` run once per data replica on that replica's rows and state (shard_map, manual over 'data'
    only: GSPMD still splits each replica's work over fsdp, spatial and model). The batch is split over
    'data' first, so every replica already holds its rows: nothing moves on the way in.

    check_vma=False: a gradient taken inside `fn` with respect to a replicated input (the params) stays
    this replica's own; with JAX's varying-axes checks on, its transpose would psum it over 'data' in
    float32, the very all-reduce the caller wants to make itself."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, axis_names={"data"},
                         check_vma=False)


def _rows(batch: dict) -> dict:
    return {k: batch[k] for k in ("images", "labels", "lengths") if k in batch}


def _optimizer_step(tx, grads):
    """(params, optimizer state) -> their values after one update of `tx` by `grads`."""
    def step(params, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state
    return step


def _finite(guard: bool, loss, norm):
    """Whether the step may change the state: its loss and gradient are finite (None: unguarded, always)."""
    return jnp.isfinite(loss) & jnp.isfinite(norm) if guard else None


def _update_if(condition, update, *state):
    """`update(*state)` if `condition` (a traced bool), else `state` unchanged; None: unconditionally.

    Each backend gets the form that costs it least (docs/performance.md, "Where the default step's
    extra time goes on a GPU"): XLA:GPU a select, the others a lax.cond."""
    if condition is None:
        return update(*state)
    return _per_backend(functools.partial(_select_update, condition, update),
                        functools.partial(_cond_update, condition, update), *state)


def _cond_update(condition, update, *state):
    """A lax.cond: with a select, the new and the old state are alive at once, so XLA:CPU copies the whole
    state and donation no longer updates it in place (the seeds' CNN on 8 CPU devices: +11.6 MB of
    temporaries and 1.6x the step time)."""
    return jax.lax.cond(condition, update, lambda *kept: kept, *state)


def _select_update(condition, update, *state):
    """A select, which XLA:GPU fuses into the update's elementwise kernels. At a lax.cond the host waits
    for the predicate every step, so it cannot queue the next step while this one runs."""
    return jax.tree.map(lambda new, old: jnp.where(condition, new, old), update(*state), state)


def _gradient_norm(grads, mesh):
    """The global 2-norm of `grads`; on XLA:GPU with its small leaves in one reduction (`_grouped_norm`),
    where each device holds every leaf whole: a leaf split over a mesh axis (fsdp, model, ...) would be
    gathered to be raveled."""
    if any(size > 1 for axis, size in mesh.shape.items() if axis != "data"):
        return optax.tree.norm(grads)
    return _per_backend(_grouped_norm, optax.tree.norm, grads)


def _per_backend(cuda, default, *args):
    """`cuda(*args)` in a step compiled for XLA:GPU (CUDA), else `default(*args)`: both are traced, the
    one for the backend the step is lowered for is compiled (measured on CUDA only, so ROCm and TPU keep
    the default)."""
    return jax.lax.platform_dependent(*args, cuda=cuda, default=default)


def _grouped_norm(grads):
    """optax.tree.norm with the leaves below `_ONE_KERNEL_BELOW` elements reduced together: XLA:GPU runs
    each reduction as a kernel of its own (ResNet-20's GPU step: 215 reduce ops instead of 282). The small
    leaves are concatenated behind a barrier, which writes them out (without it XLA splits the reduce of a
    concatenation back into one per operand); larger leaves, which a kernel reduces at full bandwidth,
    keep their own."""
    leaves = jax.tree.leaves(grads)
    small = [jnp.ravel(g) for g in leaves if g.size < _ONE_KERNEL_BELOW]
    if len(small) < 2:
        return optax.tree.norm(grads)
    together = jax.lax.optimization_barrier(jnp.concatenate(small))
    large = [g for g in leaves if g.size >= _ONE_KERNEL_BELOW]
    return jnp.sqrt(jnp.sum(jnp.square(together)) + optax.tree.norm(large, squared=True))


_ONE_KERNEL_BELOW = 2**16  # elements (256 KB in float32)


def _saved(saved_config: dict, field: str, default):
    return (saved_config.get("sync") or {}).get(field, default)  # checkpoints older than config.sync: defaults


def _check_mode(mode: str, saved_config: dict) -> None:
    saved = _saved(saved_config, "mode", "allreduce")
    if saved != mode:
        raise ConfigError(f"the checkpoint was written with sync.mode={saved}, whose train state differs from "
                          f"sync.mode={mode}'s; resume with --config.sync.mode={saved} or use a new --workdir")


class AllReduce:
    """Hard sync: every step applies the gradient averaged over all replicas.

    float32: one forward and backward pass over the global batch, and GSPMD inserts the all-reduce.
    bfloat16: each replica's gradient is computed on its own rows, cast, and the replicas' gradients
    are summed in bfloat16 (the all-reduce) and divided in float32; BatchNorm statistics still span all
    replicas (`stats_axis`), so only the gradient's rounding differs from float32."""
    mode = "allreduce"
    variants = ("step",)

    def __init__(self, mesh, grad_dtype):
        self.mesh, self.grad_dtype, self.replicas = mesh, grad_dtype, mesh.shape["data"]
        self.copies = self.replicas if grad_dtype != jnp.float32 else 1  # forward passes per step
        self.stats_axis = "data" if self.copies > 1 else None  # they are one model: statistics span them

    def names(self, names: dict) -> dict:
        """Logical names of the train state's arrays (parallel/rules.py), from the model's."""
        return names

    def shapes(self, abstract: dict) -> dict:
        """The train state's shapes, from the plain one (train/state.py abstract_state)."""
        return abstract

    def init(self, state: dict) -> dict:
        """The train state from a freshly initialised plain one (jitted into the train state's shardings)."""
        return state

    def variant_at(self, step: int) -> str:
        """The compiled step variant that runs step `step` (1-based, as the loop counts)."""
        return "step"

    def model_variables(self, state: dict) -> dict:
        """{'params', 'batch_stats'} of the one model that evaluation and export see."""
        return state

    def check_checkpoint(self, saved_config: dict, saved_shapes: dict) -> None:
        """Refuses, in one line saying why, a checkpoint whose state this mode cannot take."""
        _check_mode(self.mode, saved_config)

    def mean_gradients(self, state: dict, batch: dict, gradients):
        """(loss, accuracy, batch_stats, gradient) over the global batch; `gradients` as in train/step.py."""
        params, stats = state["params"], state["batch_stats"]
        if self.copies == 1:
            return gradients(params, stats, batch["images"], batch["labels"], batch.get("lengths"))

        def replica(params, stats, rows):
            loss, acc, stats, grads = gradients(params, stats, rows["images"], rows["labels"], rows.get("lengths"))
            mean = lambda x: jax.lax.pmean(x, "data")  # noqa: E731
            stacked = jax.tree.map(lambda g: g.astype(self.grad_dtype)[None], grads)
            return mean(loss), mean(acc), jax.tree.map(mean, stats), stacked

        loss, acc, stats, grads = _per_replica(self.mesh, replica, (P(), P(), P("data")), (P(), P(), P(), P("data")))(
            params, stats, _rows(batch))
        # Summing the replica axis (split over 'data') is the all-reduce. lax.reduce keeps it in grad_dtype
        # (jnp.sum would upcast bfloat16 first); it sits outside the shard_map because XLA:CPU's pass that
        # widens bfloat16 all-reduces fails on a psum inside a partly manual shard_map (jaxlib 0.10.2).
        zero = jnp.zeros((), self.grad_dtype)
        grads = jax.tree.map(lambda g: jax.lax.reduce(g, zero, jax.lax.add, (0,)).astype(jnp.float32) / self.copies,
                             grads)
        return loss, acc, stats, grads

    def update(self, state: dict, batch: dict, gradients, tx, variant: str, guard: bool):
        """(new arrays of the state, loss, accuracy, gradient norm, finite) for one step. `guard`: apply
        the update only if the loss and gradient are finite (`finite`: whether they were; None unguarded)."""
        loss, acc, new_stats, grads = self.mean_gradients(state, batch, gradients)
        norm = _gradient_norm(grads, self.mesh)
        finite = _finite(guard, loss, norm)

        def update(params, opt_state, _):
            return (*_optimizer_step(tx, grads)(params, opt_state), new_stats)

        params, opt_state, stats = _update_if(finite, update, state["params"], state["opt_state"], state["batch_stats"])
        return {"params": params, "batch_stats": stats, "opt_state": opt_state}, loss, acc, norm, finite


class Stale(AllReduce):
    """Every step computes the averaged gradient at the current params and applies the one computed
    `staleness` steps earlier: a parameter server whose workers all lag `staleness` updates behind.

    The gradients in flight live in the train state (`grad_queue`, a ring buffer of `staleness` slots
    sharded like the params), so checkpoints resume exactly. The first `staleness` steps apply nothing
    (their queue slots are still empty); BatchNorm running statistics update from the first step.
    Weight decay, being part of the optimizer, uses the params it is applied to. staleness=0 is allreduce.
    A non-finite step (train/step.py's guard) leaves the queue as it was, so the gradient it would have
    applied is applied `staleness` steps later instead."""
    mode = "stale"

    def __init__(self, mesh, grad_dtype, staleness: int):
        super().__init__(mesh, grad_dtype)
        self.staleness = staleness

    def names(self, names):
        if not self.staleness:
            return names
        return {**names, "grad_queue": jax.tree.map(lambda n: (None, *n), names["params"], is_leaf=_is_names)}

    def shapes(self, abstract):
        if not self.staleness:
            return abstract
        queue = jax.tree.map(lambda p: jax.ShapeDtypeStruct((self.staleness, *p.shape), p.dtype), abstract["params"])
        return {**abstract, "grad_queue": queue}

    def init(self, state):
        if not self.staleness:
            return state
        return {**state, "grad_queue": jax.tree.map(lambda p: jnp.zeros((self.staleness, *p.shape), p.dtype),
                                                    state["params"])}

    def check_checkpoint(self, saved_config, saved_shapes):
        _check_mode(self.mode, saved_config)
        saved = _saved(saved_config, "staleness", 0)
        if saved != self.staleness:
            raise ConfigError(f"the checkpoint holds the gradients in flight of sync.staleness={saved}, not "
                              f"{self.staleness}; resume with --config.sync.staleness={saved} or use a new --workdir")

    def update(self, state, batch, gradients, tx, variant, guard):
        if not self.staleness:
            return super().update(state, batch, gradients, tx, variant, guard)
        loss, acc, new_stats, fresh = self.mean_gradients(state, batch, gradients)
        norm = _gradient_norm(fresh, self.mesh)
        finite = _finite(guard, loss, norm)
        slot = state["step"] % self.staleness  # holds the gradient of step - staleness; takes this step's
        late = jax.tree.map(lambda q: jax.lax.dynamic_index_in_dim(q, slot, keepdims=False), state["grad_queue"])
        ready = state["step"] >= self.staleness  # the first `staleness` slots are still empty

        def update(params, opt_state, _, queue):
            params, opt_state = _update_if(ready, _optimizer_step(tx, late), params, opt_state)
            queue = jax.tree.map(lambda q, g: jax.lax.dynamic_update_index_in_dim(q, g, slot, 0), queue, fresh)
            return params, opt_state, new_stats, queue

        params, opt_state, stats, queue = _update_if(finite, update, state["params"], state["opt_state"],
                                                     state["batch_stats"], state["grad_queue"])
        return ({"params": params, "batch_stats": stats, "opt_state": opt_state, "grad_queue": queue},
                loss, acc, norm, finite)


class LocalSGD:
    """Soft sync: each replica trains its own copy of the model on its rows of the batch, and every
    `every`-th step the copies' params and BatchNorm statistics are averaged (one all-reduce over
    'data'); the other steps move no gradient at all. every=1 is synchronous SGD for plain and momentum
    SGD (the average of the replicas' momentum updates is the update of the averaged gradient).

    The state carries a leading replica axis (logical name 'replicas' -> mesh axis 'data'), so each
    replica's copy lives on that replica's devices. The optimizer state (momentum, Adam moments, step
    count) stays per replica and is never averaged: local momentum, as Lin et al. 2020 use it, at no
    extra communication. Evaluation and `model_variables` see the average of the copies (exactly the
    synced model at sync steps). A step that is not finite on any replica is applied on none."""
    mode = "local_sgd"
    stats_axis = None  # each copy is its own model: BatchNorm never looks across replicas

    def __init__(self, mesh, every: int):
        self.mesh, self.every = mesh, every
        self.replicas = self.copies = mesh.shape["data"]
        self.variants = ("local", "sync") if every > 1 else ("sync",)

    def names(self, names):
        stacked = lambda n: (REPLICAS, *n)  # noqa: E731
        return {k: jax.tree.map(stacked, v, is_leaf=_is_names) for k, v in names.items()}

    def shapes(self, abstract):
        stack = lambda a: jax.ShapeDtypeStruct((self.replicas, *a.shape), a.dtype)  # noqa: E731
        return {**abstract, **{k: jax.tree.map(stack, abstract[k]) for k in ("params", "batch_stats", "opt_state")}}

    def init(self, state):
        stack = lambda a: jnp.broadcast_to(a, (self.replicas, *a.shape))  # noqa: E731
        return {**state, **{k: jax.tree.map(stack, state[k]) for k in ("params", "batch_stats", "opt_state")}}

    def variant_at(self, step):
        return "sync" if step % self.every == 0 else "local"

    def model_variables(self, state):
        return {k: jax.tree.map(lambda a: a.mean(0), state[k]) for k in ("params", "batch_stats")}

    def check_checkpoint(self, saved_config, saved_shapes):
        _check_mode(self.mode, saved_config)
        saved = next(shape[0] for path, shape in sorted(saved_shapes.items()) if path.startswith("params/"))
        if saved != self.replicas:
            raise ConfigError(f"sync.mode=local_sgd keeps one copy of the model per data replica: the checkpoint "
                              f"holds {saved}, this mesh has data={self.replicas}; resume on a mesh with "
                              f"data={saved} or use a new --workdir")

    def update(self, state, batch, gradients, tx, variant, guard):
        def replica_step(local, rows):
            local = jax.tree.map(lambda a: a[0], local)  # this replica's copy: (1, ...) -> (...)
            loss, acc, new_stats, grads = gradients(local["params"], local["batch_stats"], rows["images"],
                                                    rows["labels"], rows.get("lengths"))
            mean = lambda x: jax.lax.pmean(x, "data")  # noqa: E731
            # grad_norm under local SGD: the root mean square of the replicas' own gradient norms, which is
            # finite only if every replica's is: a step not finite anywhere is applied nowhere.
            loss, norm = mean(loss), jnp.sqrt(mean(_gradient_norm(grads, self.mesh) ** 2))
            finite = _finite(guard, loss, norm)

            def update(params, opt_state, _):
                params, opt_state = _optimizer_step(tx, grads)(params, opt_state)
                stats = new_stats
                if variant == "sync":  # the only gradient- or parameter-sized collective of local SGD
                    params, stats = jax.lax.pmean((params, stats), "data")
                return params, opt_state, stats

            params, opt_state, stats = _update_if(finite, update, local["params"], local["opt_state"],
                                                  local["batch_stats"])
            new = jax.tree.map(lambda a: a[None], {"params": params, "batch_stats": stats, "opt_state": opt_state})
            return new, loss, mean(acc), norm, finite

        local = {k: state[k] for k in ("params", "batch_stats", "opt_state")}
        return _per_replica(self.mesh, replica_step, (P("data"), P("data")), (P("data"), P(), P(), P(), P()))(
            local, _rows(batch))


def _is_names(x):
    return isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x)
