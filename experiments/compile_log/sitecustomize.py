"""Logs every train step jaxdist lowers, in any Python process started with this folder on PYTHONPATH and
JAXDIST_COMPILE_LOG=FILE: one JSON line per step with a hash of its program and a hash of the same text with
every numeric constant blanked out. experiments/compile_log_summary.py counts how many compiles runs that
differ only in such constants (the schedule's total_steps, warmup, lr) would share (docs/testing.md):

    PYTHONPATH=experiments/compile_log JAXDIST_COMPILE_LOG=/tmp/steps.jsonl python -m pytest -q -n 2
    python experiments/compile_log_summary.py /tmp/steps.jsonl

Patches jaxdist.train.loop.compile_train_step once that module is imported, so nothing else is imported early.
"""
import hashlib
import importlib.abc
import importlib.util
import json
import os
import re
import sys

_TARGET = "jaxdist.train.loop"


def _logged(loop):
    """loop.compile_train_step, writing a line per lowered step variant before compiling it."""
    compile_train_step = loop.compile_train_step

    def logged(exp, lowered=None):
        lowered = lowered or loop.lower_train_step(exp)
        with open(os.environ["JAXDIST_COMPILE_LOG"], "a") as f:
            for variant, step in lowered.items():
                text = step.as_text()
                blank = re.sub(r"dense<[^>]*>", "dense<X>", text)  # StableHLO's constants: dense<5.000000e-02>
                f.write(json.dumps({"model": exp.config.model.name, "variant": variant,
                                    "program": hashlib.sha1(text.encode()).hexdigest(),
                                    "without_constants": hashlib.sha1(blank.encode()).hexdigest()}) + "\n")
        return compile_train_step(exp, lowered)
    return logged


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.compile_train_step = _logged(module)
        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("JAXDIST_COMPILE_LOG"):
    sys.meta_path.insert(0, _PatchOnImport())
