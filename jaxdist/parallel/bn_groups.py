"""BatchNorm groups (`config.model.bn_group`): which rows of a batch share BatchNorm statistics.

| bn_group        | statistics over                                  | mesh-invariant | communication            |
|-----------------|--------------------------------------------------|----------------|--------------------------|
| `global`        | every row of the forward pass                    | yes            | an all-reduce per layer  |
| `replica`       | the rows one batch shard holds (PyTorch DDP      | no             | none                     |
|                 | without SyncBatchNorm)                           |                |                          |
| `'g'` (integer) | groups of g consecutive rows (Goyal et al. 2017's| yes            | none while g divides a   |
|                 | "BN batch size")                                 |                | shard's rows             |

"The forward pass" is the global batch, a micro-batch under gradient accumulation, and one replica's
rows under sync.mode=local_sgd (each replica there is its own model). The integer is a string in config
files ("32"), as on the command line, because the field also takes the two names.

How: the training forward pass is vmapped over the groups (rows reshaped (n, ...) -> (n/g, g, ...),
params and running statistics broadcast), so any model's BatchNorm layers compute per-group statistics
without knowing it. The new running statistics are the average over groups of each group's
momentum-updated statistics, i.e. the running average moved toward the mean of the groups' means and
of their (within-group) variances. Evaluation uses the running statistics, as always.
"""
import dataclasses

import jax
from flax import nnx

from jaxdist.errors import ConfigError
from jaxdist.parallel import sharding as sharding_lib

NAMES = ("global", "replica")


def validate(config) -> None:
    group = config.model.bn_group
    if group not in NAMES and not (group.isdigit() and int(group) > 0):
        raise ConfigError(f"unknown model.bn_group {group!r}; valid: global, replica, or a positive integer "
                          f"group size such as '32'")


def group_rows(config, mesh, copies: int) -> int | None:
    """Rows per BatchNorm group in each copy's forward pass; None = all of them (`global`).

    `copies`: forward passes a step runs side by side, one per replica (parallel/sync.py)."""
    group = config.model.bn_group
    rows = config.batch_size // config.optimizer.grad_accum_steps // copies  # rows of one forward pass
    if group == "global":
        return None
    if group == "replica":
        return config.batch_size // config.optimizer.grad_accum_steps // sharding_lib.batch_shards(config, mesh)
    if rows % int(group):
        per_copy = f" / {copies} replicas (sync.mode={config.sync.mode})" if copies > 1 else ""
        raise ConfigError(f"model.bn_group={group} does not divide the {rows} rows of a forward pass (batch_size "
                          f"{config.batch_size} / grad_accum_steps {config.optimizer.grad_accum_steps}{per_copy}); "
                          f"use a divisor of {rows}")
    return int(group)


def forward(config, mesh, model, sync):
    """The training forward pass `(params, batch_stats, images, lengths) -> (logits, new batch_stats)`
    with BatchNorm statistics grouped as config.model.bn_group says.

    `sync` (parallel/sync.py) says how many copies of the forward pass a step vmaps over and, through
    `stats_axis`, whether they are one model whose `global` statistics must span the copies."""
    if not jax.tree.leaves(model.abstract_batch_stats):
        if config.model.bn_group != "global":
            raise ConfigError(f"model.bn_group={config.model.bn_group} but model {config.model.name!r} has no "
                              f"BatchNorm; leave model.bn_group=global")
        return _plain(model)
    rows = group_rows(config, mesh, sync.copies)
    if rows is None:
        return _plain(_statistics_across(model, sync.stats_axis) if sync.stats_axis else model)
    return _grouped(_plain(model), rows)


def _plain(model):
    return lambda params, stats, images, lengths: model.apply(params, stats, images, train=True, lengths=lengths)


def _grouped(apply, rows: int):
    def grouped(params, stats, images, lengths):
        n = images.shape[0]
        if rows == n:
            return apply(params, stats, images, lengths)
        split = lambda x: None if x is None else x.reshape(n // rows, rows, *x.shape[1:])  # noqa: E731
        logits, new = jax.vmap(apply, in_axes=(None, None, 0, 0))(params, stats, split(images), split(lengths))
        return logits.reshape(n, *logits.shape[2:]), jax.tree.map(lambda s: s.mean(0), new)
    return grouped


def _statistics_across(model, axis: str):
    """`model` whose training BatchNorm layers also average their statistics over the vmapped `axis`
    (flax's axis_name), so copies of one forward pass normalise with the statistics of all their rows."""
    module = nnx.merge(model.train_graph, model.abstract_params, model.abstract_batch_stats)
    module = nnx.with_attributes(module, only=nnx.BatchNorm, axis_name=axis)
    return dataclasses.replace(model, train_graph=nnx.graphdef(module))
