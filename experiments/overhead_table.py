"""The Markdown table of experiments/overhead.sh's JSON lines: per model and device count, the best round
of each runner (images/s), and default / hand-written (the issue-14 target: >= 0.98).

    python experiments/overhead_table.py overhead.jsonl
"""
import collections
import json
import sys


def main(path: str) -> None:
    best = collections.defaultdict(float)
    temp = {}
    for line in open(path):
        r = json.loads(line)
        runner, model, devices = r["run"].split()
        rate = r.get("images_per_s") or r["examples_per_s"]  # jaxdist.bench / bench_jax.py
        best[runner, model, devices] = max(best[runner, model, devices], rate)
        if "temp_bytes_per_device" in r:
            temp[runner, model, devices] = r["temp_bytes_per_device"]
    print("| model | devices | jaxdist default | jaxdist bare | hand-written | default / hand-written "
          "| temp MB default / bare |")
    print("|---|---|---|---|---|---|---|")
    for model, devices in sorted({(m, d) for _, m, d in best}, key=lambda k: (k[0], -int(k[1][:-3]))):
        d, b, h = (best.get((runner, model, devices), float("nan"))
                   for runner in ("jaxdist_default", "jaxdist_bare", "handwritten"))  # nan: not run (yet)
        td, tb = temp.get(("jaxdist_default", model, devices), 0), temp.get(("jaxdist_bare", model, devices), 0)
        print(f"| {model} | {devices[:-3]} | {d:.0f} | {b:.0f} | {h:.0f} | **{d / h:.2f}** "
              f"| {td / 1e6:.1f} / {tb / 1e6:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
