"""The parallel report: what one compiled train step costs each device, before it runs.

Written at the start of every run (`workdir/parallel_report.json`, a short table in the log), printed
by `jaxdist.bench` and used by the planner. Everything comes from the compiled step, not from a model
of it: memory from the shardings and XLA's buffer assignment, collectives from the partitioned HLO
(collectives.py), FLOPs from XLA's cost analysis.

- bytes_per_device: params, opt_state and batch_stats as the shardings place them (the largest shard
  of each array); temp, arguments, outputs and aliased from `Compiled.memory_analysis()`; `total` =
  arguments + outputs - aliased + temp, what XLA allocates for one step on one device.
- collectives: one row per (kind, mesh axes the groups span, group size), with count and result bytes
  per device per step; `collective_bytes_by_axes` sums them per axes ("data", "data+fsdp", ...).
- flops_per_step_per_device: `Compiled.cost_analysis()`, which XLA computes on the partitioned,
  per-device program (it counts replicated work, e.g. DP's optimizer update, on every device). On GPU it
  leaves out the cuDNN and cuBLAS calls (docs/performance.md, "On one GPU"), so it is low there.
- model_flops_per_step: the same analysis of the *unpartitioned* program (all devices together, no
  replication), the numerator of MFU = model_flops / devices / (step seconds x peak). Backends reached
  through the PJRT C API (CUDA, TPU) analyse no lowered program; there the host's CPU backend counts the
  same lowered module (`host_flops`). null only if that fails too: then no MFU.
- peak_flops_per_s_per_device: `config.report.peak_flops_per_s`, else the chips.py figure for the
  device kind and config.dtype, else null (CPU and unlisted chips: no MFU rather than a guess).
"""
import collections

import jax
from absl import logging

from jaxdist.parallel import chips
from jaxdist.parallel import collectives as collectives_lib
from jaxdist.parallel import sharding as sharding_lib

_MIB = 2**20


def flops(analyzed: jax.stages.Lowered | jax.stages.Compiled) -> float | None:
    """XLA's FLOP count of a lowered or compiled step, or None where the backend gives no cost analysis:
    on CUDA (reached through the PJRT C API) `Lowered.cost_analysis()` is None, and a run must not fail
    for a report field (it did: docs/benchmarks.md, "On one GPU")."""
    analysis = analyzed.cost_analysis()
    return float(analysis.get("flops", 0.0)) if analysis else None


def model_flops(lowered: jax.stages.Lowered) -> float | None:
    """FLOPs of one step before SPMD partitioning (the lowered step, not yet compiled): the whole batch,
    each op counted once. From the host's CPU backend where the device backend analyses no lowered
    program; None if neither can: then no MFU."""
    count = flops(lowered)
    return count if count is not None else host_flops(lowered)


def host_flops(lowered: jax.stages.Lowered) -> float | None:
    """XLA's cost analysis of `lowered`'s unpartitioned module by the CPU backend, which every JAX process
    has: the count goes op by op over the HLO, so it does not depend on which backend compiles it (on CPU
    it is exactly what `Lowered.cost_analysis()` returns, tests/test_report.py). jax exposes no public call
    for it (`Lowered.cost_analysis()` itself calls this one), so a jax without it, or a process started
    with JAX_PLATFORMS lacking cpu, gets None and a warning."""
    try:
        from jax._src.lib import _jax

        cpu = jax.local_devices(backend="cpu")[0].client
        analysis = _jax.hlo_module_cost_analysis(cpu, lowered.compiler_ir("hlo").as_hlo_module())
        return float(analysis["flops"])
    except Exception as e:  # noqa: BLE001 (a private call: any failure means no count, never a failed run)
        logging.warning("no model FLOPs (hence no MFU): this backend analyses no lowered program and the host's "
                        "CPU backend could not count it either: %s: %s", type(e).__name__, e)
        return None


def peak(config) -> tuple[float | None, str]:
    """(peak dense FLOP/s per device or None, where the figure comes from)."""
    if config.report.peak_flops_per_s:
        return float(config.report.peak_flops_per_s), "config.report.peak_flops_per_s"
    kind = jax.devices()[0].device_kind
    chip = chips.detect(kind)
    if chip is None:
        return None, f"unknown chip {kind!r}: no MFU (set --config.report.peak_flops_per_s)"
    return chips.peak_flops_per_s(chip, config.dtype), f"chips.py {chip.name} {config.dtype}"


def build(exp, compiled, model_flops_per_step: float | None = None) -> dict:
    """The report for experiment `exp` (train/loop.py) and its compiled train step. `model_flops_per_step`
    (`model_flops` of the same step lowered), for MFU; without it those fields are null."""
    mesh_shape = dict(exp.mesh.shape)
    memory = compiled.memory_analysis()
    state_bytes = {part: sharding_lib.bytes_per_device(exp.abstract_state[part], exp.shardings[part])
                   for part in ("params", "opt_state", "batch_stats")}
    xla_bytes = {name: int(getattr(memory, f"{field}_size_in_bytes", 0)) for name, field in
                 (("temp", "temp"), ("arguments", "argument"), ("outputs", "output"), ("aliased", "alias"))}
    xla_bytes["total"] = xla_bytes["arguments"] + xla_bytes["outputs"] - xla_bytes["aliased"] + xla_bytes["temp"]

    hlo = compiled.as_text()
    parsed = collectives_lib.parse(hlo)
    rows = collections.defaultdict(lambda: [0, 0])  # (kind, axes, group size) -> [count, bytes]
    for c in parsed:
        row = rows[c.kind, collectives_lib.spanned_axes(c.groups, mesh_shape),
                   collectives_lib.group_size(c.groups, exp.mesh.size)]
        row[0] += 1
        row[1] += c.bytes
    by_axes = collections.Counter()
    for (_, axes, _), (_, nbytes) in rows.items():
        by_axes["+".join(axes) or "none"] += nbytes

    flops_per_device = flops(compiled)
    total_flops = model_flops_per_step
    peak_flops, peak_source = peak(exp.config)
    ideal = total_flops / exp.mesh.size / peak_flops if total_flops and peak_flops else None
    return {
        "mesh": mesh_shape,
        "devices": exp.mesh.size,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "bytes_per_device": {**state_bytes, **xla_bytes},
        "collectives": [{"kind": k, "axes": list(a), "group_size": n, "count": count, "bytes": nbytes}
                        for (k, a, n), (count, nbytes) in sorted(rows.items())],
        "collective_bytes_per_step": collectives_lib.bytes_by_kind(parsed),
        "collective_bytes_by_axes": dict(sorted(by_axes.items())),
        "flops_per_step_per_device": flops_per_device,
        "model_flops_per_step": total_flops,
        "peak_flops_per_s_per_device": peak_flops,
        "peak_source": peak_source,
        "ideal_step_s": ideal,  # the step at 100% MFU; MFU = ideal_step_s / measured step seconds
    }


def mfu(report: dict, step_s: float) -> float | None:
    """Model FLOPs utilisation of a step that took `step_s` seconds, or None without a known peak."""
    return report["ideal_step_s"] / step_s if report["ideal_step_s"] and step_s > 0 else None


def table(report: dict) -> list[str]:
    """A few log lines: memory, collectives and FLOPs per device."""
    b = report["bytes_per_device"]
    lines = [f"per device: params {b['params'] / _MIB:.2f} MiB, opt_state {b['opt_state'] / _MIB:.2f} MiB, "
             f"temp {b['temp'] / _MIB:.2f} MiB, step total {b['total'] / _MIB:.2f} MiB"]
    for row in report["collectives"]:
        lines.append(f"  {row['kind']:18s} over {'+'.join(row['axes']) or 'none':22s} (groups of {row['group_size']}) "
                     f"x{row['count']:<3d} {row['bytes'] / _MIB:9.3f} MiB per step")
    if not report["collectives"]:
        lines.append("  no collectives")
    compiled, model = report["flops_per_step_per_device"], report["model_flops_per_step"]
    lines.append("flops per step: " + (f"{compiled / 1e9:.3f} GFLOP per device as compiled" if compiled is not None
                                       else "no cost analysis from this backend")
                 + (f", {model / 1e9:.3f} GFLOP model total" if model else "")
                 + (f"; peak {report['peak_flops_per_s_per_device'] / 1e12:.1f} TFLOP/s per device "
                    f"({report['peak_source']})" if report["peak_flops_per_s_per_device"] else
                    f"; {report['peak_source']}"))
    for variant, v in report.get("variants", {}).items():  # sync modes whose steps differ (local_sgd)
        lines.append(f"step variant {variant!r}: {v['share_of_steps']:.0%} of the steps, collectives "
                     f"{v['collective_bytes_per_step']['total'] / _MIB:.3f} MiB per step")
    return lines

