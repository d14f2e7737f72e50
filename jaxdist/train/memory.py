"""Refusing a run that cannot fit, before anything is allocated.

A batch far beyond the machine (batch_size=80000000 on digits) otherwise spends many minutes in
XLA's compiler and allocator, where it ignores SIGTERM and SIGINT, and dies only to SIGKILL. Two
checks, each a ConfigError with the numbers: the train state and input batches, before compiling; then the
compiled step's own account (arguments + outputs + temporaries), before the first step. On a GPU or
TPU the budget is one device's memory; on the CPU every simulated device shares the host's.
"""
import math
import os

import jax

from jaxdist.config import eval_batch_size
from jaxdist.errors import ConfigError

_GIB = 2**30
CGROUP = "/sys/fs/cgroup"  # cgroup v2: a container's memory.max and memory.current


def budget(device=None) -> tuple[int | None, int, str]:
    """(bytes available, how many local devices share them, what they are), or (None, ...) when unknown."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), 1, f"one {device.device_kind}'s memory"
    return _host_available(), jax.local_device_count(), "this host's available memory"


def _host_available() -> int | None:
    """The host's available memory, or less where a container's cgroup (v2) limit leaves less."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        names = ("SC_AVPHYS_PAGES", "SC_PAGE_SIZE")
        if not all(n in os.sysconf_names for n in names):
            return None
        available = math.prod(os.sysconf(n) for n in names)
    try:
        with open(os.path.join(CGROUP, "memory.max")) as limit, open(os.path.join(CGROUP, "memory.current")) as used:
            text = limit.read().strip()
            if text != "max":
                available = min(available, int(text) - int(used.read()))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit here
    return available


def check_before_compile(config, image_shape: tuple, state_bytes_per_device: int, batches_in_flight: int) -> None:
    """The train state (params, optimizer state, as sharded) and the input batches one process holds at
    once (prefetched and in flight): a lower bound of what the run needs, known before compiling."""
    available, sharing, what = budget()
    if available is None:
        return
    rows = max(config.batch_size, eval_batch_size(config)) // jax.process_count()
    inputs = batches_in_flight * rows * (math.prod(image_shape) * 4 + 4)  # float32 images, int32 labels
    local = jax.local_device_count()
    needed = state_bytes_per_device * sharing + (inputs if sharing > 1 else inputs / local)
    if needed > available:
        raise ConfigError(
            f"this run needs {needed / _GIB:.1f} GiB before any activation: the train state, "
            f"{state_bytes_per_device / _GIB:.2f} GiB per device{f' x {sharing} devices' if sharing > 1 else ''}, "
            f"and {batches_in_flight} input batches of {rows} images of {tuple(image_shape)} "
            f"({inputs / _GIB:.1f} GiB); {what} is {available / _GIB:.1f} GiB; lower batch_size or the model's "
            "size, or shard the state (mesh.fsdp, mesh.model)")


def check_step(config, step_bytes_per_device: int) -> None:
    """The compiled step's bytes per device (parallel/report.py: arguments + outputs - aliased + temp)."""
    available, sharing, what = budget()
    if available is None:
        return
    needed = step_bytes_per_device * sharing
    if needed > available:
        each = f" ({sharing} devices x {step_bytes_per_device / _GIB:.2f} GiB)" if sharing > 1 else ""
        raise ConfigError(
            f"the compiled train step needs {needed / _GIB:.1f} GiB{each}, but {what} is {available / _GIB:.1f} "
            f"GiB; lower batch_size, shard the state (mesh.fsdp, mesh.model) or raise "
            f"optimizer.grad_accum_steps (batch_size={config.batch_size})")
