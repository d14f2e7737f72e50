"""The planner's predicted step time against jaxdist.bench's measured one, for every mesh it ranks.

    python experiments/plan_vs_bench.py OUT.jsonl -- --config=configs/cifar_dp.py --config.model.name=cnn \
        --devices=8 --axes=data,fsdp,model [--steps=20]
    python experiments/plan_vs_bench.py OUT.jsonl -- --config=configs/digits_dp.py --devices=2 \
        --axes=data,fsdp --steps=2   # tiny: two meshes of the digits CNN (tests)

Runs `jaxdist.plan --calibrate --json` with the arguments after `--` (rates measured on this machine's
simulated devices), then `jaxdist.bench` on each ranked mesh with the same config, and prints one line
per mesh: predicted and measured (median, best) step ms, the error of the prediction against the
median, and both ranks; then the rank correlation. Every JSON result goes to OUT.jsonl (the plan
first, then one bench line per mesh). docs/planner.md reports a run.
"""
import json
import subprocess
import sys


def _run(args: list[str]) -> dict:
    print("+", " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0] * len(values)
    for r, i in enumerate(order, 1):
        ranks[i] = r
    return ranks


def main(out: str, plan_args: list[str], steps: int) -> None:
    plan = _run(["jaxdist.plan", "--calibrate", "--json", *plan_args])
    config_args = [a for a in plan_args if a.startswith("--config")]
    rows = [r for r in plan["rows"] if not r["skipped"]]
    with open(out, "a") as f:
        f.write(json.dumps(plan) + "\n")
        for row in rows:
            mesh = [f"--config.mesh.{a}={n}" for a, n in row["mesh"].items()]
            row["bench"] = _run(["jaxdist.bench", *config_args, *mesh, f"--steps={steps}", "--warmup=3",
                                 f"--config.cpu_devices={_devices(plan_args)}"])
            f.write(json.dumps(row["bench"]) + "\n")
            f.flush()
    predicted = [1e3 * r["predicted_step_s"] for r in rows]
    measured = [r["bench"]["step_ms_p50"] for r in rows]
    m = plan["machine"]
    print(f"calibrated: {m['flops_per_s'] / 1e9:.3g} GFLOP/s per device, {m['intra_host_bytes_per_s'] / 1e9:.3g} GB/s, "
          f"{m['latency_s'] * 1e6:.3g} us per collective")
    print(f"{'mesh':24s} {'compute':>8} {'comm':>7} {'pred ms':>8} {'p50 ms':>8} {'min ms':>8} {'error':>7} "
          f"{'rank pred':>9} {'rank meas':>9}")
    for row, p, q, rp, rq in zip(rows, predicted, measured, _ranks(predicted), _ranks(measured)):
        print(f"{row['name']:24s} {1e3 * row['compute_s']:8.1f} {1e3 * row['comm_s']:7.1f} {p:8.1f} {q:8.1f} "
              f"{row['bench']['step_ms_min']:8.1f} {(p - q) / q:+7.1%} {rp:9d} {rq:9d}")
    n = len(rows)
    d2 = sum((a - b) ** 2 for a, b in zip(_ranks(predicted), _ranks(measured)))
    spearman = f"{1 - 6 * d2 / (n * (n * n - 1)):.2f}" if n > 1 else "n/a"  # one mesh: nothing to rank
    print(f"Spearman rank correlation {spearman} over {n} meshes; "
          f"mean |error| {sum(abs(p - q) / q for p, q in zip(predicted, measured)) / n:.1%}")


def _devices(plan_args: list[str]) -> int:
    return int(next(a.split("=", 1)[1] for a in plan_args if a.startswith("--devices=")))


if __name__ == "__main__":
    args = sys.argv[1:]
    split = args.index("--")
    steps = next((int(a.split("=")[1]) for a in args[split + 1:] if a.startswith("--steps=")), 20)
    main(args[0], [a for a in args[split + 1:] if not a.startswith("--steps=")], steps)
