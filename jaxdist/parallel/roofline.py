"""Predicted step time of a compiled step on a machine described by a few rates (docs/planner.md).

    step = flops per device / flops_per_s
         + sum over collectives of (latency + wire bytes / link bandwidth)

Compute and communication are added, not overlapped: an upper-bound style estimate that ranks meshes by
what they cost, and is what a 2-core CPU host with simulated devices actually does. Wire bytes are what
one device sends in a ring (bandwidth-optimal) implementation over a group of n devices, from the
per-device result bytes R the HLO reports: all-reduce 2(n-1)/n R, all-gather and all-to-all (n-1)/n R,
reduce-scatter (n-1) R (its result is one shard), collective-permute R. The link is the inter-host one
when a group's devices sit on more than one host (hosts own contiguous blocks of logical device ids, as
jax.devices() orders them), else the intra-host one.
"""
import dataclasses

from jaxdist.parallel.collectives import Collective, group_size


@dataclasses.dataclass(frozen=True)
class Machine:
    flops_per_s: float  # per device
    intra_host_bytes_per_s: float  # per device, one direction
    inter_host_bytes_per_s: float
    latency_s: float  # fixed cost of each collective
    hosts: int = 1


def wire_bytes(kind: str, result_bytes: int, n: int) -> float:
    """Bytes one device sends for a collective over n devices whose result is `result_bytes`."""
    if n <= 1:
        return 0.0
    factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n, "all-to-all": (n - 1) / n,
              "reduce-scatter": n - 1, "collective-permute": 1.0}[kind]
    return factor * result_bytes


def crosses_hosts(groups, num_devices: int, hosts: int) -> bool:
    if hosts <= 1:
        return False
    if groups is None:
        return True
    per_host = num_devices // hosts
    return any(len({d // per_host for d in g}) > 1 for g in groups)


def collective_seconds(c: Collective, num_devices: int, machine: Machine) -> float:
    n = group_size(c.groups, num_devices)
    if n <= 1:
        return 0.0
    inter = crosses_hosts(c.groups, num_devices, machine.hosts)
    bandwidth = machine.inter_host_bytes_per_s if inter else machine.intra_host_bytes_per_s
    return machine.latency_s + wire_bytes(c.kind, c.bytes, n) / bandwidth


def step_seconds(flops_per_device: float, collectives: list[Collective], num_devices: int,
                 machine: Machine) -> tuple[float, float]:
    """(compute seconds, communication seconds) of one step."""
    comm = sum(collective_seconds(c, num_devices, machine) for c in collectives)
    return flops_per_device / machine.flops_per_s, comm
