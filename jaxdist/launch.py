"""Local multi-process launcher, like torchrun's standalone mode:

    python -m jaxdist.launch --nproc 2 --devices_per_proc 4 -- --config=configs/digits_dp.py --workdir=runs/mp

Starts N `python -m jaxdist.main` (or `--module jaxdist.bench|jaxdist.predict`) processes on 127.0.0.1 wired
to a coordinator on a free port (through the JAXDIST_* variables jaxdist.main reads), prefixes every output
line with the process's rank, forwards SIGTERM/SIGINT to all of them, and if one exits with an error stops
the others (SIGTERM, then SIGKILL after --grace seconds) and exits with that code and a line naming the
rank. If relaying the output fails (its own stdout closed), it stops them the same way and exits 1 with a
line naming the error.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

_USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")  # read before `import jax` sets it for this process

from jaxdist.distributed import ENV  # noqa: E402  (imports jax)
from jaxdist.train.watchdog import EXIT_CODE as WATCHDOG_EXIT_CODE  # noqa: E402

# Gloo prints a line per connection it makes ("[Gloo] Rank 0 is connected to 1 peer ranks..."), 16 in a 2-process
# digits run, to the process's own stdout: dropped here unless --verbosity=1.
_NOISE = b"[Gloo] Rank "


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _relay(rank: int, stream, out, quiet: bool, failures: list) -> None:
    """Copies a child's output to `out` line by line, prefixed with its rank, as bytes: any bytes a child
    prints pass through. If copying fails (the launcher's own stdout closed), the error goes to `failures`
    for the main loop, and the pipe is still drained: a full pipe would block the child for good."""
    prefix = f"[rank {rank}] ".encode()
    try:
        for line in stream:
            if not (quiet and line.startswith(_NOISE)):
                out.write(prefix + line)
                out.flush()
    except Exception as e:
        failures.append((rank, e))
        for _ in stream:
            pass


def launch(nproc: int, devices_per_proc: int, main_args: list[str], grace_s: float = 20.0,
           module: str = "jaxdist.main", pin: bool = False) -> int:
    address = f"127.0.0.1:{_free_port()}"
    devices_flag = "--cpu_devices" if module == "jaxdist.predict" else "--config.cpu_devices"  # predict has no config
    extra = [f"{devices_flag}={devices_per_proc}"] if devices_per_proc else []
    procs, relays, failures = [], [], []
    quiet = not any(a.split("=")[0] in ("--verbosity", "-v", "--v") and a.split("=")[-1] not in ("0", "-1")
                    for a in main_args)
    for rank in range(nproc):
        env = {**os.environ, ENV["coordinator_address"]: address, ENV["num_processes"]: str(nproc),
               ENV["process_id"]: str(rank), "PYTHONUNBUFFERED": "1"}
        if _USER_TF_LOG_LEVEL is None:
            env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # jaxdist.main picks its own (jaxdist/cli.py)
        cores = {rank % os.cpu_count()} if pin else None
        proc = subprocess.Popen([sys.executable, "-m", module, *main_args, *extra], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda c=cores: os.sched_setaffinity(0, c)) if pin else None)
        relays.append(threading.Thread(target=_relay, args=(rank, proc.stdout, sys.stdout.buffer, quiet, failures),
                                       daemon=True))
        relays[-1].start()
        procs.append(proc)

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}

    failed, running = None, 0
    try:
        while failed is None and not failures and any(p.poll() is None for p in procs):
            failed = next((r for r, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            time.sleep(0.2)
        failed = failed if failed is not None else next((r for r, p in enumerate(procs) if p.returncode), None)
        running = sum(p.poll() is None for p in procs)
        if failed is not None or failures:
            _stop(procs, grace_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for t in relays:
        t.join(timeout=5)
    if failures:  # the first: when the launcher's stdout is gone, every relay fails the same way
        rank, error = failures[0]
        stopped = f"; stopped the {running} running process(es)" if running and failed is None else ""
        print(f"jaxdist.launch: error: relaying rank {rank}'s output failed ({type(error).__name__}: {error}); "
              f"the processes' output from then on is lost{stopped}", file=sys.stderr, flush=True)
    if failed is None:
        return 1 if failures else 0
    code = procs[failed].returncode
    stopped = f"; stopped the other {nproc - 1} process(es)" if running else ""
    watchdog = " (the step watchdog: its last line names the rank that stalled)" if code == WATCHDOG_EXIT_CODE else ""
    print(f"jaxdist.launch: rank {failed} exited with code {code}{watchdog}{stopped}", file=sys.stderr, flush=True)
    return code if code > 0 else 1


def _stop(procs, grace_s: float) -> None:
    """SIGTERM (they save a checkpoint if they can), then SIGKILL whatever is left after grace_s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxdist.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, required=True, help="processes to start on this machine")
    parser.add_argument("--devices_per_proc", type=int, default=0,
                        help="simulated CPU devices per process (sets --config.cpu_devices, predict's --cpu_devices); "
                             "0 = the config's")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds between SIGTERM and SIGKILL on failure")
    parser.add_argument("--module", default="jaxdist.main", help="what each process runs",
                        choices=["jaxdist.main", "jaxdist.bench", "jaxdist.predict"])
    parser.add_argument("--pin", action="store_true", help="pin rank i to CPU core i (scaling measurements)")
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then the jaxdist.main arguments")
    args = parser.parse_args()
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
    if args.nproc < 1 or not main_args:
        parser.error("need --nproc >= 1 and the jaxdist.main arguments after --")
    sys.exit(launch(args.nproc, args.devices_per_proc, main_args, args.grace, args.module, args.pin))


if __name__ == "__main__":
    main()
