"""Single device against distributed: the same ResNet, global batch and seed on 1 device and on N
(data-parallel, and a hybrid of data, FSDP and tensor parallelism), compared on test accuracy against
the step and against training time, time per epoch, speedup and scaling efficiency.

    python experiments/single_vs_distributed.py                          # digits, offline, ~5 min on 2 cores
    python experiments/single_vs_distributed.py --data mnist --data_path ~/data --steps 1406  # the seeds' MNIST
    python experiments/single_vs_distributed.py --smoke --out /tmp/svd   # tiny, for the test suite

Every run is `python -m jaxdist.main --config=configs/mnist_resnet_dp.py` with only the mesh, device
count and dataset changed: the path users run, its own workdir under OUT/runs/ (metrics.jsonl,
curves.png, run.json), replaced on a rerun. The table is computed from those files alone:

- train s: `train_s` of the last train line (seconds in train steps: no compile, eval or checkpoint);
  wall s: the whole command, start-up, compile and evals included.
- time per epoch: train s / steps x (train examples / global batch); images/s: steps x batch / train s.
- speedup: the 1-device run's train s / this run's; scaling efficiency: speedup / devices.
- max |train loss - 1 device|: over the logged steps; mesh invariance says it stays at float
  reassociation level (docs/numerics.md).

Simulated CPU devices share the host's cores, so on CPU the speedup measures what splitting the work
costs, not what it gains; on N GPUs it measures scaling (experiments/scaling.py does processes on CPU).
Writes OUT/results.md and OUT/accuracy.png.
"""
import argparse
import os
import shutil
import sys

import harness

from jaxdist import plot

CONFIG = "configs/mnist_resnet_dp.py"


def meshes(devices: int) -> dict[str, tuple[int, dict]]:
    """Run name -> (devices, mesh). The hybrid keeps FSDP and tensor parallelism at 2 each; data takes the rest."""
    return {"1 device": (1, dict(data=1)), f"{devices} devices DP": (devices, dict(data=devices)),
            f"{devices} devices hybrid": (devices, dict(data=devices // 4, fsdp=2, model=2))}


def command(args, name: str, mesh: dict, devices: int) -> list[str]:
    """The jaxdist.main command line of one run (on GPUs main() shows the 1-device run only the first GPU)."""
    steps = args.steps
    flags = [f"--config={CONFIG}", f"--workdir={workdir(args.out, name)}", f"--config.model.name={args.model}",
             f"--config.data.name={args.data}", f"--config.batch_size={args.batch}", f"--config.seed={args.seed}",
             f"--config.total_steps={steps}", f"--config.log_every={max(1, steps // 20)}",
             f"--config.eval_every={max(1, steps // 10)}", f"--config.checkpoint_every={steps}",
             f"--config.schedule.warmup_steps={min(100, steps // 10)}", f"--config.cpu_devices={devices}",
             *(f"--config.mesh.{axis}={mesh.get(axis, 1)}" for axis in ("stage", "data", "fsdp", "spatial", "model"))]
    if args.data_path:
        flags.append(f"--config.data.path={args.data_path}")
    return [sys.executable, "-m", "jaxdist.main", *flags]


def workdir(out: str, name: str) -> str:
    return os.path.join(out, "runs", name.replace(" ", "_"))


def summarize(name: str, path: str, wall_s: float, baseline: dict | None) -> dict:
    """One table row from the run's metrics.jsonl and run.json."""
    files = harness.load_run(path)
    records, facts = files["records"], files["facts"]
    train = [r for r in records if r["split"] == "train"]
    final = [r for r in records if r["split"] == "eval"][-1]
    train_s, steps, batch = train[-1]["train_s"], facts["total_steps"], facts["global_batch"]
    row = {"run": name, "devices": facts["devices"],
           "mesh": " ".join(f"{a}={n}" for a, n in facts["mesh"].items() if n > 1) or "-",
           "steps": steps, "test accuracy": final["accuracy"], "test loss": final["loss"],
           "train s": train_s, "time per epoch s": train_s / steps * facts["train_examples"] / batch,
           "images/s": steps * batch / train_s, "compile s": facts["compile_s"], "wall s": wall_s,
           "platform": facts["platform"],
           "losses": {r["step"]: r["loss"] for r in train}}
    base = baseline or row
    row["speedup"] = base["train s"] / train_s
    row["scaling efficiency"] = row["speedup"] / facts["devices"]
    row["max abs train loss diff vs 1 device"] = max(abs(l - base["losses"][s]) for s, l in row["losses"].items())
    return row


COLUMNS = ["run", "devices", "mesh", "steps", "test accuracy", "test loss", "train s", "time per epoch s",
           "images/s", "speedup", "scaling efficiency", "max abs train loss diff vs 1 device", "compile s", "wall s"]


def accuracy_figure(runs: dict[str, str]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2))
    panels = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.93, wspace=0.2)
    for name, path in runs.items():
        records = plot.read_metrics(path)
        panels[0].plot(*plot.series(records, "train", "loss"), label=name)
        panels[1].plot(*plot.series(records, "eval", "accuracy"), marker="o", markersize=3, label=name)
        panels[2].plot(*plot.series(records, "eval", "accuracy", x="time"), marker="o", markersize=3, label=name)
    for panel, title, x in zip(panels, ("train loss", "test accuracy", "test accuracy"), ("step", "step", "time")):
        panel.set_title(title)
        panel.set_xlabel(plot.X_AXES[x])
        panel.grid(alpha=0.3)
        panel.legend(fontsize=8)
    panels[0].set_yscale("log")
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8, help="N, a multiple of 4 (the hybrid is N/4 x 2 x 2)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default="digits", help="digits (offline), mnist, cifar10, ...")
    parser.add_argument("--data_path", default="", help="config.data.path: raw downloads (docs/data.md)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=128, help="global batch, the same on every mesh")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(harness.RESULTS, "single_vs_distributed"))
    parser.add_argument("--smoke", action="store_true", help="the seeds' CNN (quick to compile), 4 devices, 6 steps "
                        "of 32: the test suite's run")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.devices, args.steps, args.batch = "cnn", 4, 6, 32
    if args.devices < 4 or args.devices % 4:
        parser.error(f"--devices={args.devices}: the hybrid needs a multiple of 4 (data=N/4 x fsdp=2 x model=2)")

    runs, rows, commands = {}, [], []
    for name, (devices, mesh) in meshes(args.devices).items():
        shutil.rmtree(workdir(args.out, name), ignore_errors=True)  # a rerun must not resume the last one
        args_list = command(args, name, mesh, devices)
        print(f"running {name}: {harness.command_line(args_list)}", flush=True)
        try:
            _, wall_s = harness.run(args_list, env={"CUDA_VISIBLE_DEVICES": "0"} if devices == 1 else None)
        except harness.RunFailed as e:
            sys.exit(f"single_vs_distributed: {e}")
        runs[name] = workdir(args.out, name)
        rows.append(summarize(name, runs[name], wall_s, rows[0] if rows else None))
        commands.append(harness.command_line(args_list))

    os.makedirs(args.out, exist_ok=True)
    accuracy_figure(runs).savefig(os.path.join(args.out, "accuracy.png"), dpi=100)
    notes = ("Simulated CPU devices share the host's cores: on CPU the speedup is the cost of splitting the "
             "work, not a gain." if rows[-1]["platform"] == "cpu" else "")
    lines = harness.header(f"Single device vs distributed: {args.model} on {args.data}", notes)
    lines += ["", *harness.table(COLUMNS, [[row[c] for c in COLUMNS] for row in rows]), "", "![](accuracy.png)",
              "", "Runs (each workdir has metrics.jsonl, run.json and curves.png):", "",
              *(f"- {name}: `{c}`" for name, c in zip(runs, commands))]
    print(harness.write_lines(os.path.join(args.out, "results.md"), lines))


if __name__ == "__main__":
    main()
