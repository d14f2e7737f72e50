"""Multi-process scaling on one machine, weak and strong: jaxdist against PyTorch DDP and a hand-written
JAX loop, for the same model.

    python experiments/scaling.py                                        # 1 and 2 processes, ~6 min on 2 cores
    python experiments/scaling.py --torch_python /path/to/venv/bin/python  # with a Python that has torch
    python experiments/scaling.py --smoke --out /tmp/scaling             # tiny, jaxdist only, for the test suite

Each process has one CPU core (pinned) and one device, so adding processes adds hardware, as adding
hosts or GPUs does. Weak scaling keeps `--batch` images per process (global batch grows with the
processes); strong scaling keeps the global batch `--global_batch` (split over the processes).

- jaxdist: `python -m jaxdist.bench --config=configs/cifar_dp.py` with the model and batch set: the
  default step as `jaxdist.main` runs it (NaN guard and gradient-norm metric on) on synthetic data of
  CIFAR-10's shape; several processes through `python -m jaxdist.launch --pin` (gloo over 127.0.0.1).
- The peers, kept unchanged in experiments/peers/ (README.md there says where they come from):
  `bench_jax.py`, a hand-written JAX loop (`--processes P --pin`), and `bench_torch.py`, PyTorch with
  one thread per process (`--ddp P --pin`, gloo). torch needs a Python that has it (`--torch_python`);
  without one the results say that PyTorch was not run.
- images/s: each benchmark's own loop rate (the median of its timed rounds: jaxdist.bench's
  `images_per_s`, the peers' `examples_per_s`), the best of `--rounds` runs interleaved to dodge the
  shared machine's noise. speedup: images/s over the same framework and mode on 1 process;
  efficiency: speedup / processes (1.0 = linear scaling).

Writes OUT/results.md, OUT/scaling.png and OUT/raw.jsonl (every benchmark's JSON line, tagged).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import harness

PEER_MODEL = {"cnn": "dcnn", "resnet20": "resnet20"}  # the peer scripts' names


def jaxdist_command(args, processes: int, global_batch: int) -> list[str]:
    bench = ["--config=configs/cifar_dp.py", f"--config.model.name={args.model}", "--config.mesh.data=-1",
             f"--config.batch_size={global_batch}", f"--steps={args.steps}", f"--warmup={args.warmup}",
             f"--repeats={args.repeats}"]
    if processes == 1:
        return ["taskset", "-c", "0", sys.executable, "-m", "jaxdist.bench", *bench, "--config.cpu_devices=1"]
    return [sys.executable, "-m", "jaxdist.launch", "--nproc", str(processes), "--devices_per_proc", "1", "--pin",
            "--module", "jaxdist.bench", "--", *bench]


def peer_command(script: str, python: str, args, processes: int, global_batch: int) -> list[str]:
    peer = [python, os.path.join("experiments", "peers", script), "--model", PEER_MODEL[args.model], "--batch",
            str(global_batch // processes), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--repeats", str(args.repeats)]
    if script == "bench_jax.py":
        return ["taskset", "-c", "0", *peer] if processes == 1 else [*peer, "--processes", str(processes), "--pin"]
    return ["taskset", "-c", "0", *peer, "--threads", "1"] if processes == 1 else [*peer, "--ddp", str(processes),
                                                                                   "--pin"]


def command(framework: str, args, processes: int, global_batch: int) -> list[str]:
    if framework == "jaxdist":
        return jaxdist_command(args, processes, global_batch)
    if framework == "jax (hand-written)":
        return peer_command("bench_jax.py", sys.executable, args, processes, global_batch)
    return peer_command("bench_torch.py", args.torch_python, args, processes, global_batch)


def images_per_s(framework: str, result: dict) -> float:
    return result["images_per_s" if framework == "jaxdist" else "examples_per_s"]


def torch_version(python: str) -> str | None:
    """torch's version in `python`, or None if it cannot import torch."""
    proc = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def measure(args_list: list[str]) -> dict:
    """The benchmark's JSON line (rank 0's, for jaxdist.launch)."""
    proc, _ = harness.run(args_list)
    lines = harness.json_lines(proc.stdout) or harness.json_lines(proc.stdout, prefix="[rank 0] ")
    if not lines:
        raise harness.RunFailed(f"no JSON line from {harness.command_line(args_list)}")
    return lines[-1]


def runs(args, frameworks: list[str]) -> list[tuple[str, int, int]]:
    """Every (framework, processes, global batch) the two modes need, each once: strong scaling's run on
    P processes is weak scaling's when the global batch is P x the per-process batch."""
    needed = []
    for framework in frameworks:
        for p in args.processes:
            for global_batch in (p * args.batch, args.global_batch):
                if (framework, p, global_batch) not in needed:
                    needed.append((framework, p, global_batch))
    return needed


def rows(args, frameworks: list[str], best: dict) -> list[dict]:
    """The table: per framework and mode, each process count against 1 process of the same mode."""
    table = []
    for framework in frameworks:
        for mode in ("weak", "strong"):
            def batch(p):
                return p * args.batch if mode == "weak" else args.global_batch
            base = best[framework, 1, batch(1)]
            for p in args.processes:
                ips = best[framework, p, batch(p)]
                table.append({"framework": framework, "scaling": mode, "processes": p, "global batch": batch(p),
                              "batch per process": batch(p) // p, "images/s": ips, "speedup": ips / base,
                              "efficiency": ips / base / p})
    return table


COLUMNS = ["framework", "scaling", "processes", "global batch", "batch per process", "images/s", "speedup",
           "efficiency"]


def figure(table: list[dict]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    panels = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.25)
    for panel, mode in zip(panels, ("weak", "strong")):
        for framework in dict.fromkeys(r["framework"] for r in table):
            points = [r for r in table if r["framework"] == framework and r["scaling"] == mode]
            panel.plot([r["processes"] for r in points], [r["images/s"] for r in points], marker="o", label=framework)
        panel.set_title(f"{mode} scaling")
        panel.set_xlabel("processes (one core each)")
        panel.set_ylabel("images/s")
        panel.grid(alpha=0.3)
        panel.legend()
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn", choices=sorted(PEER_MODEL))
    parser.add_argument("--processes", default="1,2", help="comma-separated, starting at 1")
    parser.add_argument("--batch", type=int, default=128, help="weak scaling: images per process")
    parser.add_argument("--global_batch", type=int, default=256, help="strong scaling: images over all processes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="runs of every benchmark, interleaved; the best counts")
    parser.add_argument("--torch_python", default=sys.executable, help="a Python with torch, for the PyTorch rows")
    parser.add_argument("--out", default=os.path.join(harness.RESULTS, "scaling"))
    parser.add_argument("--smoke", action="store_true", help="batch 16 (32 global), 2 steps, 1 round, jaxdist "
                        "and the hand-written JAX loop: the test suite's run")
    args = parser.parse_args()
    args.processes = [int(p) for p in args.processes.split(",")]
    if args.smoke:
        args.batch, args.global_batch, args.steps, args.warmup, args.repeats, args.rounds = 16, 32, 2, 1, 1, 1
    if args.processes[0] != 1 or any(p < 1 or args.global_batch % p for p in args.processes):
        parser.error(f"--processes={args.processes}: must start at 1, and each must divide "
                     f"--global_batch={args.global_batch}")
    if not shutil.which("taskset"):
        sys.exit("scaling: taskset (util-linux) is needed to pin processes to cores")
    frameworks = ["jaxdist", "jax (hand-written)"]
    torch = None if args.smoke else torch_version(args.torch_python)
    if args.smoke:
        torch_note = "PyTorch: not run (--smoke leaves it out)."
    elif torch:
        frameworks.append("torch")
        torch_note = f"PyTorch: `{args.torch_python}` (torch {torch})."
    else:
        torch_note = f"PyTorch: not run, `{args.torch_python}` cannot import torch (pass --torch_python)."
    print(torch_note, flush=True)

    os.makedirs(args.out, exist_ok=True)
    best, raw = {}, []
    for round_ in range(1, args.rounds + 1):
        for framework, p, global_batch in runs(args, frameworks):
            args_list = command(framework, args, p, global_batch)
            print(f"round {round_}: {harness.command_line(args_list)}", flush=True)
            try:
                result = measure(args_list)
            except harness.RunFailed as e:
                sys.exit(f"scaling: {e}")
            raw.append({**result, "framework": framework, "processes": p, "global_batch": global_batch,
                        "round": round_, "command": harness.command_line(args_list)})
            key = framework, p, global_batch
            best[key] = max(best.get(key, 0.0), images_per_s(framework, result))
    harness.write_lines(os.path.join(args.out, "raw.jsonl"), [json.dumps(r) for r in raw])

    table = rows(args, frameworks, best)
    figure(table).savefig(os.path.join(args.out, "scaling.png"), dpi=100)
    lines = harness.header(f"Scaling over processes: {args.model}, {args.batch} images per process (weak), "
                           f"{args.global_batch} in all (strong)", torch_note)
    lines += ["", *harness.table(COLUMNS, [[row[c] for c in COLUMNS] for row in table]), "", "![](scaling.png)",
              "", "Every benchmark's JSON line, with its command and round: raw.jsonl."]
    print(harness.write_lines(os.path.join(args.out, "results.md"), lines))


if __name__ == "__main__":
    main()
