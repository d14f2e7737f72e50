"""Process-level setup that must happen before JAX starts its backends: devices and the multi-process runtime."""
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


def configure_devices(config) -> None:
    """Simulate `config.cpu_devices` CPU devices so every mesh shape runs on a laptop or CI.

    Only the CPU backend reads this; on a GPU or TPU host the accelerators stay the default devices.
    With several processes it is the number of devices *per process*.
    """
    if config.cpu_devices:
        jax.config.update("jax_num_cpu_devices", config.cpu_devices)


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
    if settings["process_id"] != 0:
        # JAX aborts the process (no Python error) when the coordinator cannot be reached; check first.
        _wait_for_coordinator(settings["coordinator_address"], timeout_s)
    jax.distributed.initialize(**settings, initialization_timeout=timeout_s)


def _more_than_one(value: str) -> bool:
    return value.isdigit() and int(value) > 1 or "," in value


def _wait_for_coordinator(address: str, timeout_s: int) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"coordinator address {address!r} must be HOST:PORT, e.g. 127.0.0.1:12355")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConfigError(f"cannot reach the coordinator at {address} within {timeout_s}s ({e.strerror or e}); "
                                  "check that process 0 runs and that --coordinator_address names it") from None
            time.sleep(0.5)
