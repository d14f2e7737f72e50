"""Where the test suite's CPU goes, test by test: a pytest plugin that writes one JSON line per test with its
wall time, the CPU seconds of the pytest process itself (in-process tests: tracing, compiling, running
steps) and those of the subprocesses the test started and waited for (CLI runs, launchers and the
processes they start). On 2 cores the suite is CPU-bound, so these, not wall times, say what a cut would
save (docs/testing.md):

    PYTHONPATH=experiments/suite_cpu SUITE_CPU_LOG=/tmp/cpu.jsonl python -m pytest -q -n 2 -p suite_cpu
    python experiments/suite_cpu/suite_cpu.py /tmp/cpu.jsonl        # seconds per module, largest first

A subprocess counts once it is reaped (`getrusage(RUSAGE_CHILDREN)`), so one left running past its test
counts for the test that reaps it, or for none.
"""
import collections
import json
import os
import resource
import sys
import time

import pytest


def _cpu_seconds() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Setup, call and teardown of one test (module fixtures count for the test that first needs them)."""
    wall, (own, children) = time.perf_counter(), _cpu_seconds()
    yield
    wall, (own_after, children_after) = time.perf_counter() - wall, _cpu_seconds()
    with open(os.environ["SUITE_CPU_LOG"], "a") as f:
        f.write(json.dumps({"test": item.nodeid, "wall_s": round(wall, 3),
                            "cpu_s_in_process": round(own_after - own, 3),
                            "cpu_s_subprocesses": round(children_after - children, 3)}) + "\n")


def by_module(lines: list[dict]) -> list[dict]:
    """One row per test module, the most CPU first, and a last row for the whole suite."""
    sums = collections.defaultdict(collections.Counter)
    for line in lines:
        row = sums[line["test"].split("::")[0]]
        row.update(tests=1, wall_s=line["wall_s"], cpu_s_in_process=line["cpu_s_in_process"],
                   cpu_s_subprocesses=line["cpu_s_subprocesses"])
    rows = [{"module": module, "tests": s["tests"], "wall_s": round(s["wall_s"], 1),
             "cpu_s": round(s["cpu_s_in_process"] + s["cpu_s_subprocesses"], 1),
             "cpu_s_in_process": round(s["cpu_s_in_process"], 1),
             "cpu_s_subprocesses": round(s["cpu_s_subprocesses"], 1)}
            for module, s in sums.items()]
    rows.sort(key=lambda r: -r["cpu_s"])
    keys = ("wall_s", "cpu_s", "cpu_s_in_process", "cpu_s_subprocesses")
    total = {key: round(sum(r[key] for r in rows), 1) for key in keys}
    return [*rows, {"module": "(all)", "tests": sum(r["tests"] for r in rows), **total}]


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        for row in by_module([json.loads(line) for line in f if line.strip()]):
            print(json.dumps(row))
