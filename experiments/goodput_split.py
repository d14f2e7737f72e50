"""Where the wall time of a run goes (workdir/goodput.json): the default digits run, and a 2-process run
killed without warning (SIGKILL) between two checkpoints, then resumed once.

    python experiments/goodput_split.py                   # ~2 min on 2 cores
    python experiments/goodput_split.py --smoke --out /tmp/gs   # tiny, for the test suite

Every run is a command a user types: `python -m jaxdist.main --config=configs/digits_dp.py` and
`python -m jaxdist.launch --nproc 2 --devices_per_proc 4 -- ...`, in its own workdir under OUT/. The
2-process run is killed once its goodput.json says it reached the step half way between two checkpoints,
so the resumed attempt recomputes those steps. Prints one JSON line per run (its goodput.json "total")
and writes OUT/results.md with a table of the shares of the wall time.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import harness

from jaxdist.train import goodput

DEFAULT = ["--config=configs/digits_dp.py"]


def killed_then_resumed(out: str, steps: int, every: int) -> None:
    """The 2-process run: SIGKILL to every process at step >= every * 1.5, then the same command again."""
    workdir = os.path.join(out, "two_processes")
    command = [sys.executable, "-m", "jaxdist.launch", "--nproc", "2", "--devices_per_proc", "4", "--", *DEFAULT,
               f"--workdir={workdir}", f"--config.total_steps={steps}", f"--config.checkpoint_every={every}",
               f"--config.log_every={max(1, every // 10)}"]
    proc = subprocess.Popen(command, cwd=harness.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    path, target, deadline = os.path.join(workdir, goodput.FILE), every * 3 // 2, time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with open(path) as f:
                if json.load(f)["attempts"][-1]["reached_step"] >= target:
                    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, no chance to save
                    break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        raise harness.RunFailed(f"the 2-process run was not killed at step {target} (exit {proc.returncode})")
    harness.run(command)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(harness.RESULTS, "goodput"))
    parser.add_argument("--smoke", action="store_true", help="20 steps, checkpoints every 8: the test suite's run")
    args = parser.parse_args()
    steps, every = (20, 8) if args.smoke else (300, 100)
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    default = [*DEFAULT, f"--workdir={os.path.join(args.out, 'default')}"]
    harness.run([sys.executable, "-m", "jaxdist.main", *default, *([f"--config.total_steps={steps}"] if args.smoke else [])])
    killed_then_resumed(args.out, steps, every)

    rows = []
    for name in ("default", "two_processes"):
        with open(os.path.join(args.out, name, goodput.FILE)) as f:
            report = json.load(f)
        total = report["total"]
        print(json.dumps({"run": name, **total, "lost_steps": sum(a["lost_to_restarts"]["steps"]
                                                                  for a in report["attempts"])}), flush=True)
        rows.append([name, total["attempts"], total["wall_s"],
                     *(100 * total["seconds"][c] / total["wall_s"] for c in (*goodput.CATEGORIES, "lost_to_restarts",
                                                                            "unaccounted"))])
    columns = ["run", "attempts", "wall s", *(f"{c} %" for c in (*goodput.CATEGORIES, "lost_to_restarts",
                                                                 "unaccounted"))]
    harness.write_lines(os.path.join(args.out, "results.md"), [
        *harness.header("Goodput: where the wall time goes"), "", *harness.table(columns, rows)])


if __name__ == "__main__":
    main()
