"""Pipeline parallelism on the 'stage' mesh axis: a model's stack of identical blocks split into S
contiguous stages, each on its own devices, with the batch streamed through in M microbatches (GPipe).

Written the way MaxText writes its pipeline, in plain jnp under GSPMD rather than with shard_map: the
stacked params (L, ...) are viewed as (S, L/S, ...) with the stage dim on 'stage', a (S, microbatch, ...)
buffer holds what each stage works on, `vmap` over the stage dim runs every stage at once (each on its
own devices, since both operands are split on 'stage'), and rolling the buffer by one stage is the
only communication: a collective-permute to the next stage. Backward is autodiff of the same loop, so
the schedule is GPipe's: all forwards, then all backwards; every microbatch's activations are kept.

Iteration t (of M + S - 1) feeds microbatch t to stage 0; stage s works on microbatch t - s, so the last
stage finishes microbatch t - S + 1. Stages idle (run on filler) for S - 1 of the M + S - 1 iterations:
the bubble fraction (S - 1) / (M + S - 1).
"""
import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdist.errors import ConfigError
from jaxdist.models.registry import STACKED_MODELS
from jaxdist.parallel import sharding as sharding_lib


def bubble_fraction(stages: int, microbatches: int) -> float:
    return (stages - 1) / (microbatches + stages - 1)


@dataclasses.dataclass(frozen=True)
class GPipe:
    """runner(block_fn, stacked params, x) -> x for a model's stack (models/convmixer.py)."""
    mesh: Mesh
    microbatches: int
    batch_axes: tuple[str, ...]  # mesh axes that split the batch dim

    @classmethod
    def create(cls, config, mesh: Mesh) -> "GPipe":
        return cls(mesh, config.pipeline.microbatches, sharding_lib.batch_axes(config, mesh))

    def _constrain(self, x, *leading):
        spec = PartitionSpec(*leading, *([None] * (x.ndim - len(leading))))
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def __call__(self, block_fn, stacked, x):
        stages, m = self.mesh.shape["stage"], self.microbatches
        batch = self.batch_axes or None
        # (L, ...) -> (S, L/S, ...): stage s owns layers s*L/S .. (s+1)*L/S - 1, already on its devices.
        staged = jax.tree.map(lambda p: self._constrain(p.reshape(stages, -1, *p.shape[1:]), "stage"), stacked)
        # Microbatch j takes rows j, j+M, j+2M, ...: each device keeps working on the rows it holds.
        micro = x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
        micro = self._constrain(micro, None, batch)

        def run_stage(layers, h):
            return jax.lax.scan(lambda h, layer: (block_fn(layer, h), None), h, layers)[0]

        def iteration(carry, t):
            buffer, outputs = carry
            buffer = buffer.at[0].set(micro[jnp.minimum(t, m - 1)])  # past the last one: filler, never output
            buffer = self._constrain(jax.vmap(run_stage)(staged, buffer), "stage", batch)
            # The last stage's result is microbatch t - S + 1 (before t = S - 1 a placeholder, overwritten then).
            outputs = outputs.at[jnp.maximum(t - stages + 1, 0)].set(buffer[-1])
            return (self._constrain(jnp.roll(buffer, 1, axis=0), "stage", batch), outputs), None

        buffer = self._constrain(jnp.zeros((stages, *micro.shape[1:]), x.dtype), "stage", batch)
        outputs = jnp.zeros_like(micro)
        (_, outputs), _ = jax.lax.scan(iteration, (buffer, outputs), jnp.arange(m + stages - 1))
        return outputs.swapaxes(0, 1).reshape(x.shape)


def validate(config, mesh: Mesh, stacked_depth: int | None) -> None:
    """`stacked_depth`: the model's number of stacked blocks, None if it has no such stack."""
    stages, m = mesh.shape["stage"], config.pipeline.microbatches
    if not isinstance(m, int) or m < 1:
        raise ConfigError(f"pipeline.microbatches={m!r} must be a positive integer")
    if stages == 1:
        return
    if stacked_depth is None:
        raise ConfigError(f"stage={stages}: model {config.model.name!r} has no stack of identical blocks to split "
                          f"into stages; models that have one: {', '.join(STACKED_MODELS)}")
    if stacked_depth % stages:
        raise ConfigError(f"stage={stages} does not divide the model's {stacked_depth} blocks (model.depth); "
                          f"use a stage size that divides it")
    shards = sharding_lib.batch_shards(config, mesh)
    per_step = config.batch_size // config.optimizer.grad_accum_steps
    if per_step % (m * shards):
        raise ConfigError(f"a batch of {per_step} does not split into pipeline.microbatches={m} microbatches that "
                          f"the {shards} batch shards divide; use a batch that is a multiple of {m * shards}")


def describe(config, mesh: Mesh) -> str | None:
    """The schedule, for the run's log; None without pipelining."""
    stages, m = mesh.shape["stage"], config.pipeline.microbatches
    if stages == 1:
        return None
    return (f"pipeline: {stages} stages x {m} microbatches (GPipe), bubble fraction "
            f"{bubble_fraction(stages, m):.1%} = (stage - 1) / (microbatches + stage - 1)")
