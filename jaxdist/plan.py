"""Mesh planner: python -m jaxdist.plan --config=configs/cifar_dp.py --devices=8 [--hosts=1] [--memory_gb=16]

Compiles the train step for every mesh shape over --devices along the axes the model supports, on
simulated CPU devices (any machine will do; nothing is trained), and prints them ranked: memory per
device, whether it fits --memory_gb, FLOPs, communication bytes per step by mesh axes, and a step time
predicted by a roofline (jaxdist/parallel/roofline.py; docs/planner.md) from per-device FLOP/s and
link bandwidths: intra-host for groups within one host, inter-host for groups across hosts (hosts own
contiguous blocks of --devices/--hosts devices). The rates default to an H100 SXM box (the chip's
peak for config.dtype, NVLink 450 GB/s, 50 GB/s between hosts); --calibrate measures them on this
machine instead (jaxdist/calibrate.py), to compare predictions with jaxdist.bench here.
"""
import dataclasses
import json
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from jaxdist.cli import fail, parse_flags, quiet_library_logs, validate
from jaxdist.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_DEVICES = flags.DEFINE_integer("devices", None, "Devices to plan for (simulated on the CPU).", lower_bound=1)
_HOSTS = flags.DEFINE_integer("hosts", 1, "Hosts the devices are spread over (must divide --devices).", lower_bound=1)
_MEMORY_GB = flags.DEFINE_float("memory_gb", 0.0, "Memory per device in GiB; meshes whose step needs more are "
                                "marked and ranked last. 0 = no budget.", lower_bound=0.0)
_CHIP = flags.DEFINE_enum("chip", "h100", ["a100", "h100", "h200", "tpu_v4", "tpu_v5e", "tpu_v5p"],
                          "Chip whose peak FLOP/s (for config.dtype) is the default --flops_per_s.")
_FLOPS = flags.DEFINE_float("flops_per_s", 0.0, "FLOP/s per device; 0 = the --chip's peak.", lower_bound=0.0)
_INTRA = flags.DEFINE_float("intra_host_gb_per_s", 450.0, "GB/s (1e9 bytes) each device sends within a host.")
_INTER = flags.DEFINE_float("inter_host_gb_per_s", 50.0, "GB/s each device sends to other hosts.")
_LATENCY = flags.DEFINE_float("collective_latency_us", 10.0, "Fixed microseconds per collective.", lower_bound=0.0)
_AXES = flags.DEFINE_list("axes", None, "Mesh axes to search (default: all the model supports).")
_CALIBRATE = flags.DEFINE_bool("calibrate", False, "Measure FLOP/s, intra-host bandwidth and latency on this "
                               "machine's simulated devices and use them instead of the rate flags.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object (machine and ranked rows) instead of the table.")
flags.mark_flags_as_required(["config", "devices"])


def _check_flags(config) -> tuple[str, ...]:
    """The axes to search; ConfigError for flags that cannot describe a machine."""
    from jaxdist import planner

    if _DEVICES.value % _HOSTS.value:
        raise ConfigError(f"--hosts={_HOSTS.value} does not divide --devices={_DEVICES.value}; "
                          "hosts must hold the same number of devices")
    for name, value in (("intra_host_gb_per_s", _INTRA.value), ("inter_host_gb_per_s", _INTER.value)):
        if value <= 0:
            raise ConfigError(f"--{name}={value} must be > 0")
    supported = planner.supported_axes(config)
    axes = tuple(_AXES.value or supported)
    unsupported = [a for a in axes if a not in supported]
    if unsupported:
        raise ConfigError(f"--axes: {unsupported[0]!r} is not an axis model {config.model.name!r} can use; "
                          f"valid: {', '.join(supported)}")
    return axes


def _machine(config, devices, progress):
    from jaxdist import calibrate
    from jaxdist.parallel import chips, roofline

    rates = dict(flops_per_s=_FLOPS.value or chips.peak_flops_per_s(chips.CHIPS[_CHIP.value], config.dtype),
                 intra_host_bytes_per_s=_INTRA.value * 1e9, inter_host_bytes_per_s=_INTER.value * 1e9,
                 latency_s=_LATENCY.value * 1e-6)
    if _CALIBRATE.value:
        progress("calibrating: the train step on every device at once, then psums ...")
        rates["flops_per_s"] = calibrate.compute_rate(config, devices)
        if len(devices) > 1:
            rates["intra_host_bytes_per_s"], rates["latency_s"] = calibrate.link_rate(devices)
        progress(f"calibrated: --flops_per_s={rates['flops_per_s']:.4g} "
                 f"--intra_host_gb_per_s={rates['intra_host_bytes_per_s'] / 1e9:.4g} "
                 f"--collective_latency_us={rates['latency_s'] * 1e6:.4g}")
    return roofline.Machine(**rates, hosts=_HOSTS.value)


def main(argv):
    del argv
    quiet_library_logs()
    config = _CONFIG.value
    try:
        validate(config)
        axes = _check_flags(config)
        jax.config.update("jax_platforms", "cpu")  # simulated devices, whatever accelerators this host has
        jax.config.update("jax_num_cpu_devices", _DEVICES.value)

        from jaxdist.data.synthetic import use_synthetic_data
        from jaxdist import planner

        def progress(line):
            print(line, file=sys.stderr, flush=True)

        use_synthetic_data(config)
        devices = jax.devices()
        machine = _machine(config, devices, progress)
        rows = planner.rank(planner.plan(config, devices, axes, progress), machine, _MEMORY_GB.value * 2**30)
    except ConfigError as e:
        fail(str(e))
    if _JSON.value:
        print(json.dumps({"machine": dataclasses.asdict(machine), "memory_gb": _MEMORY_GB.value, "rows": rows}))
        return
    print(f"{config.model.name}, global batch {config.batch_size}, {config.dtype}: {len(devices)} devices on "
          f"{machine.hosts} host(s); {machine.flops_per_s / 1e12:.4g} TFLOP/s per device, "
          f"{machine.intra_host_bytes_per_s / 1e9:.4g} GB/s within a host, "
          f"{machine.inter_host_bytes_per_s / 1e9:.4g} GB/s between hosts, {machine.latency_s * 1e6:.3g} us per "
          f"collective; memory budget " + (f"{_MEMORY_GB.value:g} GiB per device" if _MEMORY_GB.value else "none"))
    for line in planner.table(rows):
        print(line)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
