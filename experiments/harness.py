"""What the experiment scripts share: running jaxdist's own commands as a user would, the machine and
library versions every result must name, and Markdown tables.

The scripts run from the repository root (`python experiments/NAME.py`), so `import harness` finds
this file next to them.
"""
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "experiments", "results")


class RunFailed(RuntimeError):
    pass


def run(args: list[str], env: dict | None = None, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
    """`args` from the repository root; (the finished process, wall seconds). RunFailed, with the last
    lines of stderr, if it exits non-zero: a table must never be written from a failed run."""
    t = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    seconds = time.perf_counter() - t
    if proc.returncode:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RunFailed(f"exit {proc.returncode}: {shlex.join(args)}\n{tail}")
    return proc, seconds


def load_run(workdir: str) -> dict:
    """A finished jaxdist.main run's files: metrics records, run.json and parallel_report.json."""
    from jaxdist import plot

    def read(name):
        with open(os.path.join(workdir, name)) as f:
            return json.load(f)
    return {"records": plot.read_metrics(workdir), "facts": read("run.json"), "report": read("parallel_report.json")}


def json_lines(text: str, prefix: str = "") -> list[dict]:
    """The JSON objects among `text`'s lines (after `prefix`, e.g. jaxdist.launch's '[rank 0] ')."""
    return [json.loads(line[len(prefix):]) for line in text.splitlines()
            if line.startswith(prefix + "{")]


def command_line(args: list[str]) -> str:
    """As typed from the repository root: `python`, and paths relative to the root."""
    return shlex.join(["python" if a == sys.executable else a.replace(REPO + os.sep, "") for a in args])


def machine() -> str:
    """CPU model and cores (and GPUs, where nvidia-smi sees some): the machine a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.strip().splitlines()
        text += f"; {len(gpus)} x {gpus[0]}" if gpus else ""
    except (OSError, subprocess.SubprocessError):
        pass
    return text


def versions() -> str:
    found = [f"Python {platform.python_version()}"]
    for package in ("jax", "jaxlib", "flax", "optax"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


def header(title: str, notes: str = "") -> list[str]:
    """The lines every results file starts with: what, the command that made it (this script's), when,
    where, with what."""
    lines = [f"# {title}", "", f"- Command: `{command_line([sys.executable, *sys.argv])}`",
             f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- Machine: {machine()}", f"- Versions: {versions()}"]
    return lines + (["", notes] if notes else [])


def table(columns: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; floats keep 4 significant digits, so a test can compare them with the raw files."""
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    return [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}",
            *(f"| {' | '.join(cell(v) for v in row)} |" for row in rows)]


def write_lines(path: str, lines: list[str]) -> str:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
