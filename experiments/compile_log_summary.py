"""What a set of runs (the suite, say) compiled, from the lines experiments/compile_log/sitecustomize.py wrote
(its docstring has the command):

    python experiments/compile_log_summary.py COMPILES.jsonl

Prints one JSON object:
- "steps": train steps lowered, distinct programs, distinct programs once numeric constants are blanked out,
  and per model the programs that differ only in constants (the compiles that constants as arguments would save);
- "compiles": per function, XLA compiles the persistent cache did not have ("compiled": count and seconds) and
  loads from it ("loaded"), largest first; "total_compile_s" sums the seconds of the compiles alone;
- "processes": interpreters started, per entry point and, within it, per the entry point of the process that
  started it ("not logged": a process without the log, such as the pytest run's own).
"""
import collections
import json
import sys


def step_summary(steps: list[dict]) -> dict:
    by_blank = collections.defaultdict(set)
    models = {}
    for line in steps:
        by_blank[line["without_constants"]].add(line["program"])
        models[line["without_constants"]] = line["model"]
    shared = collections.Counter()
    for blank, programs in by_blank.items():
        shared[models[blank]] += len(programs) - 1
    return {"lowerings": len(steps), "programs": len({line["program"] for line in steps}),
            "programs_without_constants": len(by_blank), "saved_by_model": dict(shared.most_common())}


def compile_summary(compiles: list[dict]) -> dict:
    """'hit' lines are loads from the cache; 'miss' and 'off' (no cache) lines are compiles."""
    functions = collections.defaultdict(lambda: {"compiled": [0, 0.0], "loaded": [0, 0.0]})
    for line in compiles:
        entry = functions[line["function"]]["loaded" if line["cache"] == "hit" else "compiled"]
        entry[0] += 1
        entry[1] += line["seconds"]
    rows = sorted(functions.items(), key=lambda item: -item[1]["compiled"][1])
    return {"total_compile_s": round(sum(f["compiled"][1] for f in functions.values()), 1),
            "by_function": {name: {kind: {"count": n, "seconds": round(s, 1)} for kind, (n, s) in f.items()}
                            for name, f in rows}}


def process_summary(processes: list[dict]) -> dict:
    """In the order they started: a parent's pid names the latest process with it (pids are reused in a long run)."""
    entries = {}
    by_entry = collections.defaultdict(collections.Counter)
    for line in processes:
        by_entry[line["entry"]][entries.get(line["parent"], "not logged")] += 1
        entries[line["pid"]] = line["entry"]
    rows = sorted(by_entry.items(), key=lambda item: -item[1].total())
    return {"started": len(processes),
            "by_entry": {entry: {"count": parents.total(), "started_by": dict(parents.most_common())}
                         for entry, parents in rows}}


def summary(lines: list[dict]) -> dict:
    return {"steps": step_summary([line for line in lines if line["kind"] == "step"]),
            "compiles": compile_summary([line for line in lines if line["kind"] == "compile"]),
            "processes": process_summary([line for line in lines if line["kind"] == "process"])}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(summary([json.loads(line) for line in f if line.strip()])))
