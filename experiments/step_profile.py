"""Where the train step's time goes, op by op: runs `jaxdist.bench ARGS --profile_dir=DIR` (a jax.profiler
trace of --steps steps after its timed rounds; on the CPU with XLA:CPU's per-op trace events switched on)
and sums the trace's innermost events per name, per traced step.

    python experiments/step_profile.py --config=configs/seqmnist_lstm.py --config.cpu_devices=1 \\
        --config.mesh.data=1 --steps=10                  # the 1-device LSTM step (docs/rnn.md)
    python experiments/step_profile.py --top=15 --config=configs/cifar_dp.py --steps=5

Prints jaxdist.bench's JSON line, then one line per op, the slowest first: `ms_per_step` (its time summed
over the traced steps, divided by their number), `calls_per_step` (1 for an op the step runs once, T for
one inside a loop of T iterations) and `us_per_call`. The ops are the trace events that name an HLO instruction of
the compiled step (`fusion.12`, `ynn_fusion.3`, `copy.30`) and hold no other; ops on different threads or
devices overlap in time, so their sum can exceed the step. Checked on the CPU only. Any other jaxdist.bench flag works, and the
trace itself stays in DIR (--profile_dir=DIR; default a new temporary directory) for TensorBoard or Perfetto.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def innermost_ops(events: list[dict]) -> list[dict]:
    """The trace's XLA op events (they name their HLO instruction) that enclose no other op of their thread:
    the kernels, not a while loop or conditional around them."""
    leaves = []
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "hlo_op" in e.get("args", {}):
            by_thread[(e["pid"], e["tid"])].append(e)
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        enclosing = []  # [end, event, encloses another op]
        for e in thread:
            while enclosing and enclosing[-1][0] <= e["ts"]:
                _, done, encloses = enclosing.pop()
                if not encloses:
                    leaves.append(done)
            if enclosing:
                enclosing[-1][2] = True
            enclosing.append([e["ts"] + e["dur"], e, False])
        leaves.extend(done for _, done, encloses in enclosing if not encloses)
    return leaves


def per_op(events: list[dict], steps: int) -> list[dict]:
    """{op, ms_per_step, calls_per_step, us_per_call} per op name, the most time first."""
    total, calls = collections.Counter(), collections.Counter()
    for e in innermost_ops(events):
        total[e["args"]["hlo_op"]] += e["dur"]  # microseconds
        calls[e["args"]["hlo_op"]] += 1
    return [{"op": name, "ms_per_step": round(us / steps / 1e3, 3), "calls_per_step": round(calls[name] / steps, 2),
             "us_per_call": round(us / calls[name], 1)} for name, us in total.most_common()]


def main():
    parser = argparse.ArgumentParser(usage="python experiments/step_profile.py [--top=K] JAXDIST_BENCH_FLAGS")
    parser.add_argument("--top", type=int, help="print the K slowest ops only")
    ours, args = parser.parse_known_args()
    if not any(a.startswith("--profile_dir=") for a in args):
        args.append("--profile_dir=" + tempfile.mkdtemp(prefix="step_profile_"))
    xla_flags = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"  # XLA:CPU's op events
    env = {**os.environ, "XLA_FLAGS": xla_flags.strip()}
    proc = subprocess.run([sys.executable, "-m", "jaxdist.bench", *args], cwd=REPO, env=env, stdout=subprocess.PIPE)
    if proc.returncode:
        sys.exit(proc.returncode)  # jaxdist.bench said why on stderr
    bench = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    print(json.dumps(bench), flush=True)
    profile = bench["profile"]
    # The newest run directory (named by its start time) is this run's: DIR may hold earlier ones.
    trace = sorted(glob.glob(os.path.join(profile["dir"], "plugins", "profile", "*", "perfetto_trace.json.gz")))[-1]
    with gzip.open(trace) as f:
        events = json.load(f)["traceEvents"]
    for row in per_op(events, profile["steps"])[:ours.top]:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
