"""Measure this machine's roofline rates on its own devices (jaxdist.plan --calibrate).

- FLOP/s per device: the config's own train step run on every device at once, each on its share of the
  batch (batch / devices) with its own replica and *no* collective (a shard_map of the step with no
  named axis), so all devices compute together as they do in training; rate = the step's per-device
  FLOPs (XLA cost analysis) / median wall time. Using the model itself rather than a matmul matters on
  CPUs, where small convs reach a fraction of a matmul's rate.
- Link bandwidth and per-collective latency: psums over all devices of 64 KiB to 4 MiB per device,
  timed; a least-squares line through (ring wire bytes, seconds) gives latency (intercept) and
  bandwidth (1 / slope). With one process all devices are on one host: inter-host links are not measured.
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import shard_map
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdist.parallel import roofline
from jaxdist.train import loop

_PSUM_BYTES = (64 * 2**10, 512 * 2**10, 4 * 2**20)


def _median_seconds(fn, args: tuple, repeats: int, feed_back: bool = False) -> float:
    """Median wall time of `fn(*args)`; `feed_back`: the first output replaces the first argument (donated)."""
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
        if feed_back:
            args = (out[0], *args[1:])
    return statistics.median(times[1:])


def compute_rate(config, devices, repeats: int = 5) -> float:
    """Per-device FLOP/s of the config's train step, all devices computing their batch shares at once."""
    c = config.copy_and_resolve_references()
    c.mesh.update({a: 1 for a in c.mesh})
    exp = loop.build_experiment(c, devices[:1])  # one device's step: the model, optimizer and state shapes
    per_device = c.batch_size // len(devices)
    mesh = Mesh(np.asarray(devices), ("d",))
    step = shard_map(loop.train_step_fn(exp, exp.sync.variants[-1]), mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec("d")),
                     out_specs=PartitionSpec(), check_vma=False)
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("d"))
    state = jax.device_put(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), exp.abstract_state), replicated)
    batch = loop.abstract_batch(exp, per_device * len(devices), with_mask=False)
    batch = jax.device_put({k: jnp.zeros(v.shape, v.dtype) for k, v in batch.items()}, split)
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()  # donated, as in training
    flops = float(compiled.cost_analysis()["flops"])  # the per-device program's
    return flops / _median_seconds(compiled, (state, batch), repeats, feed_back=True)


def link_rate(devices, repeats: int = 10) -> tuple[float, float]:
    """(bytes per second, seconds of latency) of all-reduces over all devices, fitted to ring wire bytes."""
    mesh = Mesh(np.asarray(devices), ("d",))
    n = len(devices)
    psum = jax.jit(shard_map(lambda x: jax.lax.psum(x, "d"), mesh=mesh, in_specs=PartitionSpec("d"),
                             out_specs=PartitionSpec("d")))
    wire, seconds = [], []
    for size in _PSUM_BYTES:
        x = jax.device_put(jnp.ones((n * size // 4,), jnp.float32), NamedSharding(mesh, PartitionSpec("d")))
        wire.append(roofline.wire_bytes("all-reduce", size, n))
        seconds.append(_median_seconds(psum, (x,), repeats))
    slope, intercept = np.polyfit(wire, seconds, 1)
    return 1.0 / slope, max(float(intercept), 0.0)
