"""JAXDIST_MALLOC=reuse: glibc malloc settings that let a CPU run reuse a step's freed host memory.

Why: XLA:CPU allocates each step's temporaries in blocks (87 MB in all for the 1-device LSTM of
configs/seqmnist_lstm.py, the largest 76 MB) from one of its own threads. glibc serves a block over 32 MB
from mmap (a thread outside the main one, whose arena's heaps stop at 64 MB, has no other choice) and
returns it to the kernel when the step frees it, so every step page-faults all of it in again: 22,000
faults per LSTM step. One arena that never mmaps and keeps what is freed lets the next step reuse the same
pages, as PyTorch users get from preloading jemalloc: the LSTM step goes from 142-148 to 94-96 ms.

Off by default: the one arena's lock costs small steps and several devices' threads more than the faults
do (the digits CNN and ResNet-8 on 1 and 8 devices ran at 0.71-0.89x their default speed).
docs/benchmarks.md ("Host memory") has the A/B of experiments/host_memory.sh; jaxdist.bench's
host_page_faults_per_step shows whether a run pays the faults. The cost beside: the process keeps its
peak host memory until it exits.
"""
import ctypes
import os

from jaxdist.errors import ConfigError

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
CHOICES = ("default", "reuse")

applied = False  # whether this process runs with the settings (jaxdist.bench reports it)


def configure() -> bool:
    """Applies the settings if JAXDIST_MALLOC=reuse (default: glibc's own); returns whether they are in
    force. Called before JAX starts its threads: a thread that has allocated keeps its arena."""
    global applied
    choice = os.environ.get("JAXDIST_MALLOC") or "default"
    if choice not in CHOICES:
        raise ConfigError(f"JAXDIST_MALLOC={choice!r} is not a setting; valid: 'default' (glibc's own malloc "
                          "settings) or 'reuse' (keep the memory a step frees for the next one)")
    if choice == "default" or applied:
        return applied
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it
    except (OSError, AttributeError):
        raise ConfigError("JAXDIST_MALLOC=reuse sets glibc's malloc, and this process does not run on glibc; "
                          "unset it") from None
    applied = all(libc.mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1),  # every thread on the main arena, which grows without the 64 MB heap limit
        (M_MMAP_MAX, 0),  # no block from mmap, so none goes back to the kernel when freed
        (M_TRIM_THRESHOLD, 2**31 - 1)))  # nor is the heap's freed top returned
    return applied
