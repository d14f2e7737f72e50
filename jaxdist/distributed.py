"""Process-level setup that must happen before JAX starts its backends: devices and the multi-process runtime."""
import contextlib
import os
import socket
import time

import jax

from jaxdist.errors import ConfigError

# The same settings as flags or environment variables (containers, the local launcher, Kubernetes).
ENV = {"coordinator_address": "JAXDIST_COORDINATOR_ADDRESS", "num_processes": "JAXDIST_NUM_PROCESSES",
       "process_id": "JAXDIST_PROCESS_ID"}
# Environments where JAX finds the coordinator by itself (jax.distributed.initialize() without arguments).
_AUTO_DETECTED = {"SLURM_NTASKS": "SLURM", "OMPI_COMM_WORLD_SIZE": "Open MPI", "TPU_WORKER_HOSTNAMES": "TPU pod"}


def configure_devices(cpu_devices: int) -> None:
    """Simulate `cpu_devices` CPU devices (config.cpu_devices) so every mesh shape runs on a laptop or CI.

    Only the CPU backend reads this; on a GPU or TPU host the accelerators stay the default devices.
    With several processes it is the number of devices *per process*.
    """
    if cpu_devices:
        jax.config.update("jax_num_cpu_devices", cpu_devices)


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
               timeout_s: int) -> None:
    """Join a multi-process run, if this is one: explicit settings (flags, else JAXDIST_* variables) or
    a cluster JAX detects (SLURM, Open MPI, TPU pods). A single process without either does nothing."""
    settings = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    for name, value in settings.items():
        if value is None and os.environ.get(ENV[name]):
            settings[name] = os.environ[ENV[name]] if name == "coordinator_address" else int(os.environ[ENV[name]])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
    if settings["coordinator_address"] is None:
        detected = [what for var, what in _AUTO_DETECTED.items() if _more_than_one(os.environ.get(var, ""))]
        if detected:
            jax.distributed.initialize(initialization_timeout=timeout_s)
        return
    missing = [f"--{name}" for name, value in settings.items() if value is None]
    if missing:
        raise ConfigError(f"--coordinator_address needs {' and '.join(missing)} too (or {', '.join(ENV.values())})")
    if not 0 <= settings["process_id"] < settings["num_processes"]:
        raise ConfigError(f"process_id={settings['process_id']} must be in [0, num_processes={settings['num_processes']})")
    # JAX aborts the process (no Python error, no names) when a process is missing or the port is taken:
    # a rendezvous of our own on the coordinator port first, which can name them.
    rendezvous(settings["coordinator_address"], settings["num_processes"], settings["process_id"], timeout_s)
    jax.distributed.initialize(**settings, initialization_timeout=timeout_s)


def _more_than_one(value: str) -> bool:
    return value.isdigit() and int(value) > 1 or "," in value


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"coordinator address {address!r} must be HOST:PORT, e.g. 127.0.0.1:12355")
    return host, int(port)


def rendezvous(address: str, num_processes: int, process_id: int, timeout_s: int) -> None:
    """Every process checks in with process 0 on the coordinator's port before JAX takes it over.

    Process 0 listens, each other process connects and sends its rank and process count, and once all
    have come process 0 answers each one "go" and frees the port for JAX's coordinator. Raises
    ConfigError naming the port in use, the ranks that never came, a mismatched process count, or (on
    the others) a process 0 that cannot be reached."""
    host, port = _host_port(address)
    if process_id:
        _check_in(host, port, num_processes, process_id, timeout_s)
        return
    with _listen(port) as server:
        arrived, deadline = {}, time.monotonic() + timeout_s
        while len(arrived) < num_processes - 1:
            server.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                peer, _ = server.accept()
            except TimeoutError:
                missing = sorted(set(range(1, num_processes)) - set(arrived))
                for waiting in arrived.values():
                    waiting.close()
                raise ConfigError(f"process{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of "
                                  f"{num_processes} did not join within {timeout_s}s (coordinator {address}); start "
                                  "them with the same --coordinator_address and --num_processes") from None
            peer.settimeout(10)
            try:
                rank, count = (int(x) for x in peer.makefile().readline().split())
            except (OSError, ValueError):  # not a jaxdist process (a port scan, a health check): not counted
                peer.close()
                continue
            if count != num_processes:
                peer.close()
                raise ConfigError(f"process {rank} was started with --num_processes={count}, process 0 with "
                                  f"{num_processes}; give every process the same value")
            arrived[rank] = peer
        for peer in arrived.values():
            with contextlib.suppress(OSError):  # a peer gone since: JAX's own start reports it
                peer.sendall(b"go\n")
        for peer in arrived.values():  # the peers close first: the TIME_WAIT stays on their side, not on the port
            with contextlib.suppress(OSError):
                peer.recv(1)
            peer.close()


def _listen(port: int) -> socket.socket:
    """A listener on every interface at `port`, as JAX's coordinator will be; ConfigError if it is taken."""
    try:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        return socket.create_server(("", port))
    except OSError as e:
        raise ConfigError(f"coordinator port {port} is already in use on this host ({e.strerror}); another "
                          "run may hold it: pick a free port in --coordinator_address") from None


def _check_in(host: str, port: int, num_processes: int, process_id: int, timeout_s: int) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(f"{process_id} {num_processes}\n".encode())
                s.settimeout(max(deadline - time.monotonic(), 1))
                if s.makefile().readline().strip() == "go":
                    return
                raise ConnectionResetError("process 0 refused this process")
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConfigError(f"cannot reach the coordinator at {host}:{port} within {timeout_s}s ({e.strerror or e}); "
                                  "check that process 0 runs and that --coordinator_address names it") from None
            time.sleep(0.5)
