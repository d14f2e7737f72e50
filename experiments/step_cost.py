"""The compiled train step's cost, jaxdist's default path (`configs/cifar_dp.py`, as jaxdist.bench runs it)
against the hand-written loop (experiments/peers/bench_jax.py, run unchanged): XLA's cost analysis
(flops, bytes accessed) and the temporaries of each compiled step. Exact and free of the shared VM's
timing noise: where the two differ, one step does work the other does not. docs/benchmarks.md
("Framework overhead") reads it.

    python experiments/step_cost.py --model resnet20 --devices 1     # one JSON line per side, then the ratios
    python experiments/step_cost.py --model cnn --devices 8 --bare   # jaxdist without guard and norm metric
    python experiments/step_cost.py --model cnn --devices 8 --hlo DIR    # and each side's compiled step as
                                                                         # optimised HLO text, DIR/<side>.hlo
"""
import argparse
import contextlib
import json
import os
import runpy
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = {"cnn": "dcnn", "resnet20": "resnet20"}


def cost(compiled, hlo: str | None = None) -> dict:
    """XLA's count of the step's work; `hlo`: also write its optimised HLO text there."""
    if hlo:
        with open(hlo, "w") as f:
            f.write(compiled.as_text())
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return {"flops": analysis["flops"], "bytes_accessed": analysis["bytes accessed"],
            "temp_bytes": compiled.memory_analysis().temp_size_in_bytes}


def jaxdist_step(model: str, devices: int, bare: bool, hlo: str | None) -> dict:
    sys.path.insert(0, REPO)
    from jaxdist.bench import use_synthetic_data
    from jaxdist.train import loop
    config = runpy.run_path(os.path.join(REPO, "configs", "cifar_dp.py"))["get_config"]()
    config.model.name, config.cpu_devices, config.mesh.data = model, devices, devices
    if bare:  # the NaN guard and the gradient-norm metric off, as experiments/overhead.sh's "bare" runs
        config.nan_policy, config.log_grad_norm = "off", False
    use_synthetic_data(config)
    exp = loop.build_experiment(config)
    return cost(loop.compile_train_step(exp)[exp.sync.variant_at(1)], hlo)


def peer_step(model: str, devices: int, hlo: str | None) -> dict:
    """Runs the peer script for one warm-up and one timed step, keeping the executables it compiles: the
    train step is the one with the most flops (the others initialise)."""
    import jax
    compiled = []
    original = jax.stages.Lowered.compile

    def keep(self, *args, **kwargs):
        compiled.append(original(self, *args, **kwargs))
        return compiled[-1]

    jax.stages.Lowered.compile = keep
    sys.argv = ["bench_jax.py", "--model", PEER[model], "--devices", str(devices), "--steps", "1", "--warmup", "1",
                "--repeats", "1"]
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        runpy.run_path(os.path.join(REPO, "experiments", "peers", "bench_jax.py"), run_name="__main__")
    step = max(compiled, key=lambda c: cost(c)["flops"])
    return cost(step, hlo)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(PEER), default="resnet20")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--bare", action="store_true", help="jaxdist without the NaN guard and the gradient-norm metric")
    p.add_argument("--hlo", metavar="DIR", help="write each side's compiled step as DIR/<side>.hlo (optimised HLO)")
    p.add_argument("--side", choices=["jaxdist", "handwritten"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:  # one side per process: each sets its own device count before JAX starts
        if args.side == "jaxdist":
            import jax
            jax.config.update("jax_num_cpu_devices", args.devices)
        side = args.side + (" bare" if args.bare and args.side == "jaxdist" else "")
        hlo = os.path.join(args.hlo, side.replace(" ", "_") + ".hlo") if args.hlo else None
        step = (jaxdist_step(args.model, args.devices, args.bare, hlo) if args.side == "jaxdist" else
                peer_step(args.model, args.devices, hlo))
        return print(json.dumps({"side": side, "model": args.model, "devices": args.devices, **step}))
    sides = {}
    for side in ("jaxdist", "handwritten"):
        command = [sys.executable, __file__, "--model", args.model, "--devices", str(args.devices), "--side", side]
        command += ["--bare"] * args.bare + ([f"--hlo={args.hlo}"] if args.hlo else [])
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        sides[side] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(sides[side]), flush=True)
    print(json.dumps({"model": args.model, "devices": args.devices, "jaxdist / handwritten": {
        key: round(sides["jaxdist"][key] / sides["handwritten"][key], 4)
        for key in ("flops", "bytes_accessed", "temp_bytes")}}))


if __name__ == "__main__":
    main()
