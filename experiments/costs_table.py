"""The Markdown table of experiments/default_costs.sh's JSON lines: each variant's best round (images/s)
and its change against the default path's best round.

    python experiments/costs_table.py default_costs.jsonl
"""
import collections
import json
import sys


def main(path: str) -> None:
    best, temp = collections.defaultdict(float), {}
    for line in open(path):
        r = json.loads(line)
        best[r["run"]] = max(best[r["run"]], r["images_per_s"])
        temp[r["run"]] = r["temp_bytes_per_device"]
    default = next(run for run in best if run.startswith("default "))
    print("| variant | images/s (best round) | vs default | temp MB per device |")
    print("|---|---|---|---|")
    for run, rate in best.items():
        print(f"| {run} | {rate:.0f} | {rate / best[default] - 1:+.1%} | {temp[run] / 1e6:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
