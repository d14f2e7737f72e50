"""Strategy against strategy: one model, data and seed trained on N devices under each parallelism
strategy jaxdist has (data, FSDP, tensor, a hybrid of the three, spatial, pipeline, and local SGD),
compared on throughput, memory and communication per device, and the loss each reaches.

    python experiments/strategies.py                                  # 8 simulated devices, ~30 min on 2 cores
    python experiments/strategies.py --strategies dp,fsdp --steps 50  # a subset
    python experiments/strategies.py --smoke --out /tmp/strategies    # tiny, for the test suite

The model is ConvMixer (width 64, depth 8, patch 2, kernel 5) on digits upsampled to 16x16 by default
(8x8 tokens): the one shipped model every strategy applies to, pipeline (its blocks are a stack) and
spatial (rows) included. Every run is `python -m jaxdist.main --config=configs/digits_dp.py` with the
model, mesh and optimizer (AdamW, lr 0.003, as ConvMixer is trained) changed, its own workdir under
OUT/runs/ (replaced on a rerun), and the table comes from its files alone:

- images/s: the median over the train log windows after the first (which holds the first step's
  dispatch) of metrics.jsonl's `images_per_s`; the strategies' real speed on the machine it ran on.
- MiB per device: parallel_report.json's `bytes_per_device` (params and optimizer state as sharded;
  `total` = what XLA allocates for one step); collective MiB per step: its `collective_bytes_per_step`
  (for local SGD, the mean over the run's steps of its local and averaging steps).
- final train loss: the last log window's mean; test accuracy: the last eval.

DP, FSDP, TP, hybrid, spatial and pipeline compute the same function (the same losses up to float
reassociation, tests/test_sharding_invariance.py); local SGD averages parameters every `--local_every`
steps instead of gradients every step, so its loss differs by design.
Writes OUT/results.md and OUT/strategies.png.
"""
import argparse
import os
import shutil
import statistics
import sys

import harness

MIB = 2**20
STRATEGIES = ("dp", "fsdp", "tp", "hybrid", "spatial", "pipeline", "local_sgd")


def mesh(strategy: str, n: int) -> dict:
    """The mesh of `strategy` on n devices (a multiple of 4): the 2- and 4-way axes fixed, data the rest."""
    return {"dp": dict(data=n), "fsdp": dict(fsdp=n), "tp": dict(data=n // 2, model=2),
            "hybrid": dict(data=n // 4, fsdp=2, model=2), "spatial": dict(data=n // 4, spatial=4),
            "pipeline": dict(stage=2, data=n // 2), "local_sgd": dict(data=n)}[strategy]


def command(args, strategy: str) -> list[str]:
    flags = ["--config=configs/digits_dp.py", f"--workdir={workdir(args.out, strategy)}",
             f"--config.model.name={args.model}", f"--config.model.dim={args.dim}", f"--config.model.depth={args.depth}",
             "--config.model.patch_size=2", "--config.model.kernel_size=5", f"--config.data.image_size={args.image_size}",
             f"--config.batch_size={args.batch}", f"--config.total_steps={args.steps}",
             f"--config.log_every={max(1, args.steps // 10)}", f"--config.eval_every={args.steps}",
             f"--config.checkpoint_every={args.steps}", f"--config.schedule.warmup_steps={args.steps // 10}",
             "--config.optimizer.name=adamw", "--config.optimizer.lr=0.003", "--config.optimizer.weight_decay=0.01",
             f"--config.cpu_devices={args.devices}", "--config.pipeline.microbatches=4",
             *(f"--config.mesh.{a}={mesh(strategy, args.devices).get(a, 1)}"
               for a in ("stage", "data", "fsdp", "spatial", "model"))]
    if strategy == "local_sgd":
        flags += ["--config.sync.mode=local_sgd", f"--config.sync.every={args.local_every}"]
    return [sys.executable, "-m", "jaxdist.main", *flags]


def workdir(out: str, strategy: str) -> str:
    return os.path.join(out, "runs", strategy)


def collective_bytes(report: dict) -> float:
    """Per step, averaged over the run's step variants (local SGD: local steps and averaging steps)."""
    variants = report.get("variants")
    if not variants:
        return report["collective_bytes_per_step"]["total"]
    return sum(v["share_of_steps"] * v["collective_bytes_per_step"]["total"] for v in variants.values())


def summarize(strategy: str, path: str) -> dict:
    """One table row from the run's metrics.jsonl, run.json and parallel_report.json."""
    files = harness.load_run(path)
    train = [r for r in files["records"] if r["split"] == "train"]
    final = [r for r in files["records"] if r["split"] == "eval"][-1]
    memory = files["report"]["bytes_per_device"]
    return {"strategy": strategy, "mesh": " ".join(f"{a}={n}" for a, n in files["facts"]["mesh"].items() if n > 1),
            "images/s": statistics.median(r["images_per_s"] for r in train[1:] or train),
            "params+opt MiB/device": (memory["params"] + memory["opt_state"]) / MIB,
            "temp MiB/device": memory["temp"] / MIB, "total MiB/device": memory["total"] / MIB,
            "collective MiB/step": collective_bytes(files["report"]) / MIB,
            "final train loss": train[-1]["loss"], "test accuracy": final["accuracy"],
            "compile s": files["facts"]["compile_s"]}


COLUMNS = ["strategy", "mesh", "images/s", "params+opt MiB/device", "temp MiB/device", "total MiB/device",
           "collective MiB/step", "final train loss", "test accuracy", "compile s"]
BARS = ("images/s", "total MiB/device", "collective MiB/step", "final train loss")


def bar_chart(rows: list[dict]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4))
    panels = fig.subplots(1, len(BARS))
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.2, top=0.9, wspace=0.25)
    names = [r["strategy"] for r in rows]
    for panel, column in zip(panels, BARS):
        panel.bar(names, [r[column] for r in rows], color="tab:blue")
        panel.set_title(column)
        panel.tick_params(axis="x", rotation=45, labelsize=8)
        panel.grid(axis="y", alpha=0.3)
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated, of {STRATEGIES}")
    parser.add_argument("--devices", type=int, default=8, help="a multiple of 4")
    parser.add_argument("--model", default="convmixer", help="convmixer (every strategy applies) or another "
                        "model for the strategies that apply to it (pipeline needs a stack of blocks)")
    parser.add_argument("--dim", type=int, default=64, help="convmixer's width")
    parser.add_argument("--depth", type=int, default=8, help="convmixer's blocks; even: the pipeline makes 2 stages")
    parser.add_argument("--image_size", type=int, default=16, help="digits are 8x8; upsampled to this")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--local_every", type=int, default=4, help="local SGD: steps between parameter averages")
    parser.add_argument("--out", default=os.path.join(harness.RESULTS, "strategies"))
    parser.add_argument("--smoke", action="store_true", help="the seeds' CNN (quick to compile) at 8x8 on 4 "
                        "devices, 4 steps of 32, under dp, hybrid and local_sgd: the test suite's run")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.image_size, args.devices, args.steps, args.batch = "cnn", 8, 4, 4, 32
        args.strategies, args.local_every = "dp,hybrid,local_sgd", 2
    strategies = args.strategies.split(",")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategy {unknown[0]!r}; valid: {', '.join(STRATEGIES)}")
    if args.devices < 4 or args.devices % 4:
        parser.error(f"--devices={args.devices}: must be a multiple of 4 (hybrid and spatial have 4-way axes)")

    rows, commands = [], []
    for strategy in strategies:
        shutil.rmtree(workdir(args.out, strategy), ignore_errors=True)  # a rerun must not resume the last one
        args_list = command(args, strategy)
        print(f"running {strategy}: {harness.command_line(args_list)}", flush=True)
        try:
            harness.run(args_list)
        except harness.RunFailed as e:
            sys.exit(f"strategies: {e}")
        rows.append(summarize(strategy, workdir(args.out, strategy)))
        commands.append(harness.command_line(args_list))

    os.makedirs(args.out, exist_ok=True)
    bar_chart(rows).savefig(os.path.join(args.out, "strategies.png"), dpi=100)
    model = f"ConvMixer-{args.dim}/{args.depth}" if args.model == "convmixer" else args.model
    lines = harness.header(f"Strategies on {args.devices} devices: {model}, digits at "
                           f"{args.image_size}x{args.image_size}, global batch {args.batch}, {args.steps} steps")
    lines += ["", *harness.table(COLUMNS, [[row[c] for c in COLUMNS] for row in rows]), "", "![](strategies.png)",
              "", "Runs (each workdir has metrics.jsonl, parallel_report.json, run.json and curves.png):", "",
              *(f"- {s}: `{c}`" for s, c in zip(strategies, commands))]
    print(harness.write_lines(os.path.join(args.out, "results.md"), lines))


if __name__ == "__main__":
    main()
