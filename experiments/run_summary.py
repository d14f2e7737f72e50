"""One JSON line that sums up a finished jaxdist.main run from the files in its workdir: where it ran,
how fast (median images/s and MFU of its log windows), what it reached (the last eval), how often it
started (attempts, and the step each resumed from) and where its wall time went (goodput shares).

    python experiments/run_summary.py WORKDIR [WORKDIR ...]

For runs on machines whose logs are not at hand (experiments/gpu_main.sh): every figure comes from
run.json, metrics.jsonl, parallel_report.json and goodput.json, none is measured here.
"""
import json
import os
import statistics
import sys

import harness


def summary(workdir: str) -> dict:
    run = harness.load_run(workdir)
    facts, report = run["facts"], run["report"]
    with open(os.path.join(workdir, "goodput.json")) as f:
        goodput = json.load(f)
    train = [r for r in run["records"] if r["split"] == "train"]
    windows = train[1:] or train  # the first window holds the warm-up steps
    evals = [r for r in run["records"] if r["split"] == "eval"]
    mfus = [r["mfu"] for r in windows if r.get("mfu") is not None]
    total = goodput["total"]
    return {
        "workdir": workdir,
        **{k: facts[k] for k in ("platform", "device_kind", "devices", "processes", "model", "data", "global_batch",
                                 "total_steps", "compile_s", "jax")},
        "images_per_s_median": statistics.median(r["images_per_s"] for r in windows),
        "mfu_median": statistics.median(mfus) if mfus else None,
        "model_flops_per_step": report["model_flops_per_step"],
        "final_eval": {k: evals[-1][k] for k in ("step", "accuracy", "loss", "examples")} if evals else None,
        "attempts": total["attempts"],
        "started_at_steps": [a["first_step"] for a in goodput["attempts"]],
        "wall_s": total["wall_s"],
        "shares": {k: round(v / total["wall_s"], 4) for k, v in total["seconds"].items()},
    }


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python experiments/run_summary.py WORKDIR [WORKDIR ...]")
    for workdir in sys.argv[1:]:
        print(json.dumps(summary(workdir)), flush=True)
