"""Huge pages for the host memory of a CPU run: JAXDIST_MALLOC=hugepages (the default) or glibc.

Why: XLA:CPU allocates all of a step's temporaries as one block per execution (90 MB for the 1-device
LSTM of configs/seqmnist_lstm.py) from one of its own threads. glibc serves a block over 32 MB from mmap
(outside the main thread it has no other choice) and unmaps it when the step ends, so every step faults
the whole block in again, 4 KB at a time: 22,000 page faults per LSTM step, a fifth of its time. glibc's
tunable glibc.malloc.hugetlb=1 makes malloc ask the kernel for transparent huge pages (madvise) on what it
maps, so the same block takes a few dozen 2 MB faults. glibc reads its tunables only when a process
starts, so the entry points (main, bench, predict) restart themselves once, before they import anything
that starts a thread, with the tunable added to GLIBC_TUNABLES.

Measured by experiments/host_memory.sh (docs/benchmarks.md, "Host memory"): the LSTM step from 105-106 to
86-94 ms (1.27x the images/s), small steps (digits CNN and ResNet-8, 1 and 8 devices) no slower. JAXDIST_MALLOC=glibc keeps glibc's own settings (no restart). A GLIBC_TUNABLES that already sets
glibc.malloc.hugetlb is the user's choice and is left alone; the kernel must allow transparent huge pages
(/sys/kernel/mm/transparent_hugepage/enabled: madvise or always), else there is nothing to gain.
"""
import os
import sys

from jaxdist.errors import ConfigError

TUNABLE = "glibc.malloc.hugetlb"
CHOICES = {"hugepages": "huge pages for what malloc maps, the default",
           "glibc": "glibc's own malloc settings"}
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def setting() -> str:
    """JAXDIST_MALLOC, checked: one of CHOICES (unset or empty: hugepages). Raises ConfigError."""
    choice = os.environ.get("JAXDIST_MALLOC") or "hugepages"
    if choice not in CHOICES:
        valid = ", ".join(f"{name!r} ({meaning})" for name, meaning in CHOICES.items())
        raise ConfigError(f"JAXDIST_MALLOC={choice!r} is not a setting; valid: {valid}")
    return choice


def _glibc_version() -> tuple[int, ...]:
    """(major, minor) of the C library this process runs on; () if it is not glibc."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return ()
    return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else ()


def _kernel_allows_huge_pages() -> bool:
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def _tunables() -> list[str]:
    return [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t]


def in_force() -> bool:
    """Whether this process started with malloc's huge pages (jaxdist.bench reports it)."""
    return f"{TUNABLE}=1" in _tunables() and _glibc_version() >= (2, 35) and _kernel_allows_huge_pages()


def restart_with_huge_pages() -> None:
    """Re-executes this command (same interpreter, arguments and process id) with glibc.malloc.hugetlb=1,
    unless JAXDIST_MALLOC chooses otherwise (an unknown value is reported later, by cli.join), the user's
    GLIBC_TUNABLES already sets it, or this machine cannot use it (glibc before 2.35, which has no such
    tunable; huge pages off in the kernel). Called at the top of an entry point's __main__, before its
    imports: a restart then costs ~50 ms."""
    if os.environ.get("JAXDIST_MALLOC", "hugepages") not in ("", "hugepages"):
        return
    tunables = _tunables()
    if any(t.startswith(f"{TUNABLE}=") for t in tunables):
        return
    if _glibc_version() < (2, 35) or not _kernel_allows_huge_pages() or not sys.executable:
        return
    os.environ["GLIBC_TUNABLES"] = ":".join([*tunables, f"{TUNABLE}=1"])
    os.execv(sys.executable, sys.orig_argv)
