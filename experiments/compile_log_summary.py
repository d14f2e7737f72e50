"""How many train-step compiles the suite (or any set of runs) would save if numeric constants were step
arguments: reads the lines experiments/compile_log/sitecustomize.py wrote (its docstring has the command).

    python experiments/compile_log_summary.py STEPS.jsonl

Prints one JSON line: lowerings, distinct programs, distinct programs once constants are blanked out, and
per model the programs that differ only in constants.
"""
import collections
import json
import sys


def summary(lines: list[dict]) -> dict:
    by_blank = collections.defaultdict(set)
    models = {}
    for line in lines:
        by_blank[line["without_constants"]].add(line["program"])
        models[line["without_constants"]] = line["model"]
    shared = collections.Counter()
    for blank, programs in by_blank.items():
        shared[models[blank]] += len(programs) - 1
    return {"lowerings": len(lines), "programs": len({line["program"] for line in lines}),
            "programs_without_constants": len(by_blank), "saved_by_model": dict(shared.most_common())}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(summary([json.loads(line) for line in f if line.strip()])))
