"""Many `python -m jaxdist.main ARGS` command lines for the price of one interpreter start.

    python tests/core_only.py tests.forked_cli [MODULE] < commands.json > results.json

MODULE: the entry point, default jaxdist.main (jaxdist.predict: its command lines instead).
stdin: a JSON list of argument lists. Imports the module once (no JAX backend started), then runs
each command line in a fork of this process: its own sys.argv, absl flags, signal handlers and
devices, stdout and stderr captured, as `python -m jaxdist.main` runs it. stdout: a JSON list of
{"returncode", "stdout", "stderr"}. Saves ~4 s of imports per command on 2 cores, which keeps a
table of 50+ bad inputs inside the suite's budget.
"""
import importlib
import json
import os
import sys
import tempfile
import time

from absl import app

from jaxdist.cli import parse_flags


def run_forked(entry, args: list[str]) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: a fresh command line
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.argv = [entry.__name__, *args]
            if hasattr(entry, "STARTED"):  # jaxdist.main's process start, for goodput.json: this fork's
                entry.STARTED = time.monotonic()
            code = 0
            try:
                app.run(entry.main, flags_parser=parse_flags)
            except SystemExit as e:
                code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1  # as the interpreter does
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return {"returncode": os.waitstatus_to_exitcode(status), "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


# What the command lines import after their device setup, imported once here instead of in every fork (~1 s
# each on 2 cores). None of them starts a JAX backend, so each fork still chooses its own devices.
AFTER_DEVICE_SETUP = ("jaxdist.train.loop", "jaxdist.inference", "matplotlib.backends.backend_agg")

if __name__ == "__main__":
    module = importlib.import_module(sys.argv[1] if len(sys.argv) > 1 else "jaxdist.main")
    for name in AFTER_DEVICE_SETUP:
        importlib.import_module(name)
    commands = json.load(sys.stdin)
    results = [run_forked(module, args) for args in commands]
    sys.stdout.write(json.dumps(results))
