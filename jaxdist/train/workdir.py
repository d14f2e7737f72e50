"""The workdir: checked before compiling, and held by one training run at a time.

The hold is an exclusive flock on the directory itself: nothing is written to take it, the kernel
ends it when the process dies (a killed run never leaves a stale lock), and a second run is refused
at once, naming the process that holds it (from /proc/locks), instead of crashing inside Orbax with
both writing the same checkpoint directories. Filesystems without flock (some NFS setups) are run
without the hold, with a warning.
"""
import contextlib
import errno
import fcntl
import os
import shutil

from absl import logging

from jaxdist.errors import ConfigError


def check_writable(path: str) -> None:
    """ConfigError unless `path` is, or can be created as, a directory this user can write."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"--workdir={path} is a file, not a directory; give a directory (created if missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"--workdir={path} is not writable by this user; choose another --workdir")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--workdir={path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir={path} cannot be created: {parent} is not writable by this user")


@contextlib.contextmanager
def hold(path: str, enabled: bool = True):
    """Creates `path` if needed and holds it for this run. A run that fails before writing anything
    (a refused config, a step too big for the memory) removes the directory again if it made it."""
    if not enabled:  # multi-process: process 0 holds the workdir for all
        yield
        return
    created = not os.path.exists(path)
    os.makedirs(path, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            logging.warning("cannot lock --workdir=%s (%s); nothing stops a second run from using it", path, e)
        else:
            os.close(fd)
            raise ConfigError(f"--workdir={path} is in use by {_holder(path)}; wait for it to end, stop it, or "
                              "use another --workdir") from None
    try:
        yield
    except BaseException:
        if created and not os.listdir(path):
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def _holder(path: str) -> str:
    """'process 1234 (python -m jaxdist.main ...)' from /proc/locks, where Linux lists each flock's owner."""
    inode = os.stat(path).st_ino
    try:
        with open("/proc/locks") as f:
            pids = [line.split()[4] for line in f if line.split()[1] == "FLOCK"
                    and line.split()[5].endswith(f":{inode}")]
        with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"process {pids[0]} ({command[:160]})"
    except (OSError, IndexError):
        return "another process"
