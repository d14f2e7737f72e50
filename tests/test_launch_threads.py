"""Threads that must never die silently: jaxdist.launch's output relays (children here are tiny Python
modules, launched in-process through `launch`) and the signal watcher of jaxdist/train/preemption.py."""
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time

from jaxdist.launch import launch
from tests.conftest import REPO

# 200 KB after the odd bytes: more than a pipe holds, so a relay that stopped reading blocks the child.
ODD_BYTES = """import sys
sys.stdout.buffer.write(b"caf\\xe9 \\xff\\xfe\\n")
sys.stdout.write(("y" * 99 + "\\n") * 2000)
print("done")
"""
# Waits to be stopped; on SIGTERM prints 140 KB (as a process saving and logging would) and exits 75.
WAITS = """import signal, sys, time
def stop(*_):
    sys.stdout.write("saving\\n" * 20000)
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
print("started", flush=True)
time.sleep(60)
"""


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fails the test instead of hanging it (the bugs these tests catch are hangs)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds}s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _child_module(tmp_path, monkeypatch, source: str) -> str:
    """`source` as a module the launcher can start with `python -m`."""
    (tmp_path / "child.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "child"


def test_output_that_is_not_utf8_is_relayed_as_it_is(tmp_path, monkeypatch, capfdbinary):
    module = _child_module(tmp_path, monkeypatch, ODD_BYTES)
    with _deadline(20):
        assert launch(2, 0, [], module=module) == 0
    out = capfdbinary.readouterr().out
    for rank in range(2):
        assert f"[rank {rank}] caf\xe9 \xff\xfe\n".encode("latin-1") in out
        assert out.count(f"[rank {rank}] y".encode()) == 2000 and f"[rank {rank}] done\n".encode() in out


def test_a_closed_stdout_stops_the_processes_with_a_line_instead_of_hanging(tmp_path, monkeypatch, capfd):
    """The relays fail to write; they keep draining the pipes (the children print 140 KB while stopping), and the
    launcher stops the children at once (not after their 60 s) and names the error."""
    module = _child_module(tmp_path, monkeypatch, WAITS)
    read, write = os.pipe()
    os.close(read)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(open(write, "wb", buffering=0)))
    started = time.monotonic()
    with _deadline(20):
        code = launch(2, 0, [], grace_s=30, module=module)
    assert code == 1 and time.monotonic() - started < 10
    assert re.fullmatch(r"jaxdist\.launch: error: relaying rank [01]'s output failed \(BrokenPipeError: \[Errno 32\] "
                        r"Broken pipe\); the processes' output from then on is lost; "
                        r"stopped the 2 running process\(es\)",
                        capfd.readouterr().err.splitlines()[-1])


def test_a_signal_ends_the_process_also_when_its_stderr_is_gone(cli_env):
    """Outside the train loop, the signal watcher thread exits 75; with no reader on stderr (a killed launcher) the
    failed write must not kill the thread and leave the process ignoring every signal."""
    child = subprocess.Popen([sys.executable, "-c", "import time\nfrom jaxdist.train.preemption import exit_on_signal\n"
                              "exit_on_signal()\nprint('ready', flush=True)\ntime.sleep(30)"],
                             cwd=REPO, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        child.stderr.close()
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 75
    finally:
        child.kill()
        child.wait()
