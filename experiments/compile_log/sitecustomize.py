"""Logs what jaxdist compiles, in any Python process started with this folder on PYTHONPATH and
JAXDIST_COMPILE_LOG=FILE (a pytest run's subprocesses too), as JSON lines of three kinds:

- "step": every train step jaxdist lowers, with a hash of its program and a hash of the same text with every
  numeric constant blanked out (would the schedule's total_steps, warmup, lr as arguments save compiles?);
- "compile": every XLA compile JAX runs (any jit: train and eval steps, initialisers, eager ops), its function
  name, seconds, and whether the persistent compilation cache had it ("hit": the seconds are a load);
- "process": every process that starts an interpreter (each pays for its imports; a fork, as tests/forked_cli.py
  makes, does not; a process that execs itself again, as jaxdist's entry points do once, counts once), with its
  entry point, its pid and its parent's.

experiments/compile_log_summary.py sums them up (docs/testing.md):

    PYTHONPATH=experiments/compile_log JAXDIST_COMPILE_LOG=/tmp/compiles.jsonl python -m pytest -q -n 2
    python experiments/compile_log_summary.py /tmp/compiles.jsonl

Patches jaxdist.train.loop.compile_train_step once that module is imported, so nothing else is imported early;
the compiles come from JAX's own debug log lines (jax._src.compiler, jax._src.dispatch), which are kept off stderr.
"""
import hashlib
import importlib.abc
import importlib.util
import json
import logging
import os
import re
import sys
import threading

_TARGET = "jaxdist.train.loop"
_COMPILED = re.compile(r"Finished XLA compilation of (.+) in ([0-9.]+) sec")


def _write(line: dict) -> None:
    with open(os.environ["JAXDIST_COMPILE_LOG"], "a") as f:
        f.write(json.dumps(line) + "\n")


def _logged(loop):
    """loop.compile_train_step, writing a line per lowered step variant before compiling it."""
    compile_train_step = loop.compile_train_step

    def logged(exp, lowered=None):
        lowered = lowered or loop.lower_train_step(exp)
        for variant, step in lowered.items():
            text = step.as_text()
            blank = re.sub(r"dense<[^>]*>", "dense<X>", text)  # StableHLO's constants: dense<5.000000e-02>
            _write({"kind": "step", "model": exp.config.model.name, "variant": variant,
                    "program": hashlib.sha1(text.encode()).hexdigest(),
                    "without_constants": hashlib.sha1(blank.encode()).hexdigest()})
        return compile_train_step(exp, lowered)
    return logged


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Stays on sys.meta_path (tests/core_only.py wraps every finder there, so it cannot remove itself)."""
    _finding = False

    def find_spec(self, name, path, target=None):
        if name != _TARGET or self._finding:
            return None
        self._finding = True  # the other finders locate the module
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.compile_train_step = _logged(module)
        spec.loader.exec_module = exec_module
        return spec


class _Compiles(logging.Handler):
    """JAX logs a cache hit or miss, then "Finished XLA compilation of F in S sec", on the compiling thread."""
    def __init__(self):
        super().__init__(logging.DEBUG)
        self._cache = threading.local()

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Persistent compilation cache hit"):
            self._cache.outcome = "hit"
        elif message.startswith("PERSISTENT COMPILATION CACHE MISS"):
            self._cache.outcome = "miss"
        elif match := _COMPILED.match(message):
            _write({"kind": "compile", "function": match[1], "seconds": float(match[2]),
                    "cache": getattr(self._cache, "outcome", "off")})
            self._cache.outcome = "off"
        if record.levelno >= logging.WARNING:  # what JAX would have printed anyway
            logging.getLogger().handle(record)


_TAKES_A_VALUE = {"-X", "-W"}


def entry_point(argv: list[str]) -> str:
    """'-m jaxdist.main', '-c', or a script's file name with its first argument ('core_only.py jaxdist.main')."""
    args = argv[1:]
    while args and args[0].startswith("-") and args[0] not in ("-m", "-c"):  # interpreter options: -u, -X importtime
        args = args[2:] if args[0] in _TAKES_A_VALUE else args[1:]
    if not args:
        return "(interactive)"
    if args[0] == "-m":
        return " ".join(args[:2])
    if args[0] == "-c":
        return "-c"
    first = args[1:2] if args[1:2] and not args[1].startswith("-") else []
    return " ".join([os.path.basename(args[0]), *first])


if os.environ.get("JAXDIST_COMPILE_LOG"):
    if os.environ.get("JAXDIST_COMPILE_LOG_PID") != str(os.getpid()):  # not this process exec'ing itself again
        os.environ["JAXDIST_COMPILE_LOG_PID"] = str(os.getpid())  # (jaxdist/host_memory.py: same pid, ~50 ms)
        _write({"kind": "process", "entry": entry_point(sys.orig_argv), "pid": os.getpid(), "parent": os.getppid()})
    sys.meta_path.insert(0, _PatchOnImport())
    _handler = _Compiles()
    for _name in ("jax._src.compiler", "jax._src.dispatch"):  # named before JAX is imported: the same loggers
        _logger = logging.getLogger(_name)
        _logger.setLevel(logging.DEBUG)
        _logger.addHandler(_handler)
        _logger.propagate = False
