"""Collectives of one compiled step, read off its HLO text (`compiled.as_text()`): kind, bytes, and
the mesh axes each one runs over.

Why: the sharding plan decides how much each step communicates (DP: one gradient all-reduce; FSDP:
all-gathers of params plus reduce-scatters of gradients; TP: activations), and the compiled HLO is
the only place where that is certain: GSPMD chooses and may merge the collectives itself.

What counts: every all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute
instruction, sized by its *result* shape (tuple results summed; dtype-aware, e.g. bf16 = 2 bytes,
pred = 1, s4 = 1/2). The HLO after SPMD partitioning is per device, so the figures are bytes of
collective results *per device per step*, not bytes on the wire (a ring all-reduce sends about
2(n-1)/n times its buffer; an all-gather's result includes the device's own shard).

Asynchronous pairs (`all-gather-start` / `all-gather-done`, `all-reduce-start` / `-done`,
`collective-permute-start` / `-done`) are one transfer: only the `-done` result is counted, because
the `-start` result is a tuple that also carries the operand and bookkeeping scalars; the device
groups come from the `-start`. Collectives wrapped in `async-start`/`async-done` are counted once
through the wrapped instruction itself.

Which axes: each collective's device groups, in any of the forms XLA prints (`{{0,1},{2,3}}`, the
iota form `[4,2]<=[2,4]T(1,0)`, the mesh form `mesh['axis_0'=4,'axis_1'=2] {'axis_0'}`, and
collective-permute's `source_target_pairs`), become lists of logical device ids. Logical id i is the
i-th device of the jax Mesh in its flat order (checked in tests/test_report.py), so a mesh axis is
*spanned* by a collective when its coordinate varies within a group.

What it does not see: it is a static count, so a collective inside a while loop (e.g. the
grad-accumulation scan) counts once, not once per trip; collectives inside a conditional count
whether or not the branch runs; and anything outside this one program (host transfers, the
multi-process gloo/MPI layer's own framing, a separate eval step) is not included.
"""
import dataclasses
import math
import re

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# Bits per element of each HLO primitive type that can appear in a collective's result.
_BITS = {
    "pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16,
    "s32": 32, "u32": 32, "s64": 64, "u64": 64, "f16": 16, "bf16": 16, "f32": 32, "f64": 64,
    "c64": 64, "c128": 128, "token": 0,
}

# `[ROOT] %name = <result shape> <opcode>(operands), attributes`; the opcode may carry -start/-done.
_INSTRUCTION = re.compile(
    r"%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.+?)\s+(?P<kind>" + "|".join(KINDS) + r")(?P<phase>-start|-done)?"
    r"\((?P<operands>[^)]*)\)")
# One array shape inside the result: dtype and dims, e.g. f32[128,10] or bf16[] (layouts ignored).
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+[0-9]*(?:e[0-9]+m[0-9]+[a-z]*)?)\[(?P<dims>[^\]]*)\]")
_INTS = r"\d+(?:,\d+)*"
_LIST_GROUPS = re.compile(r"replica_groups=\{(?P<groups>(?:\{[\d,]*\},?)*)\}")
_IOTA_GROUPS = re.compile(rf"replica_groups=\[(?P<dims>{_INTS})\]<=\[(?P<reshape>{_INTS})\](?:T\((?P<perm>{_INTS})\))?")
_MESH_GROUPS = re.compile(
    r"replica_groups=mesh\[(?P<axes>[^\]]*)\]"
    rf"(?:, device_ids=\((?:\[(?P<reshape>{_INTS})\](?:T\((?P<perm>{_INTS})\))?|(?P<ids>{_INTS}))\))?"
    r" \{(?P<group>[^}]*)\}")
_PAIRS = re.compile(r"source_target_pairs=\{(?P<pairs>(?:\{\d+,\d+\},?)*)\}")
# A cheap first look: most lines name no collective, and _INSTRUCTION's backtracking over a long line is slow.
_MENTIONS_A_KIND = re.compile("|".join(KINDS))


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    bytes: int  # result bytes per device
    groups: tuple[tuple[int, ...], ...] | None  # logical device ids; None: one group of all devices


def _dtype_bits(dtype: str) -> int:
    if dtype in _BITS:
        return _BITS[dtype]
    if dtype.startswith("f8") or dtype.startswith("f4") or dtype.startswith("f6"):  # f8e4m3fn, f4e2m1fn, ...
        return int(dtype[1])
    raise ValueError(f"unknown HLO element type {dtype!r}")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string, tuple or array: '(f32[4]{0}, bf16[2,3]{1,0})' -> 16 + 12."""
    bits = 0
    for m in _ARRAY.finditer(shape):
        dims = [d.strip().lstrip("<=") for d in m["dims"].split(",") if d.strip()]  # '<=10' is a bound
        bits += _dtype_bits(m["dtype"]) * math.prod(int(d) for d in dims)
    return (bits + 7) // 8


def _ints(text: str | None) -> list[int]:
    return [int(x) for x in text.split(",")] if text else []


def _iota(dims: list[int], reshape: list[int], perm: list[int]) -> np.ndarray:
    """XLA's iota tile assignment `[dims]<=[reshape]T(perm)`: arange, reshaped, transposed, reshaped."""
    ids = np.arange(math.prod(reshape)).reshape(reshape)
    return (ids.transpose(perm) if perm else ids).reshape(dims)


def _mesh_form_groups(m: re.Match) -> np.ndarray:
    """Groups of the mesh form: the named (sub-)axes of an XLA mesh, over its device order.

    `mesh['a'=4,'b'=2], device_ids=([2,4]T(1,0)) {'a':(2)2}` is the mesh a=4 x b=2 over the devices
    [0,2,4,6,1,3,5,7], grouped over the sub-axis of 'a' of size 2 that comes after a pre-size of 2.
    Each axis with group members is reshaped into (pre-size, size, rest) pieces; the grouped pieces go
    last and consecutive runs of them form the groups (XLA's MeshAxesReplicaGroupList).
    """
    names, sizes = zip(*((n.strip().strip("'"), int(s)) for n, s in
                         (a.split("=") for a in m["axes"].split(","))))
    if m["ids"]:
        devices = np.array(_ints(m["ids"]))
    elif m["reshape"]:
        devices = _iota([math.prod(sizes)], _ints(m["reshape"]), _ints(m["perm"]))
    else:
        devices = np.arange(math.prod(sizes))
    refs = []  # (axis index, pre-size, size) of each grouped (sub-)axis, in the printed order
    for ref in filter(None, (r.strip() for r in m["group"].split(","))):
        sub = re.fullmatch(r"'(?P<name>[^']+)'(?::\((?P<pre>\d+)\)(?P<size>\d+))?", ref)
        axis = names.index(sub["name"])
        refs.append((axis, int(sub["pre"] or 1), int(sub["size"] or sizes[axis])))
    dims, grouped = [], {}  # reshaped dims; ref -> its position among them
    for axis, size in enumerate(sizes):
        prefix = 1
        for ref in sorted((r for r in refs if r[0] == axis), key=lambda r: r[1]):
            if ref[1] != prefix:
                dims.append(ref[1] // prefix)
                prefix = ref[1]
            grouped[ref] = len(dims)
            dims.append(ref[2])
            prefix *= ref[2]
        if prefix != size or not any(r[0] == axis for r in refs):
            dims.append(size // prefix)
    order = [grouped[r] for r in refs]
    rest = [d for d in range(len(dims)) if d not in order]
    group_size = math.prod(r[2] for r in refs)
    return devices.reshape(dims).transpose(rest + order).reshape(-1, group_size)


def device_groups(line: str) -> tuple[tuple[int, ...], ...] | None:
    """The device groups an HLO collective's attributes name (None: all devices in one group).

    For collective-permute, each source-target pair with two different devices is a group.
    """
    if m := _PAIRS.search(line):
        pairs = re.findall(r"\{(\d+),(\d+)\}", m["pairs"])
        return tuple((int(s), int(t)) for s, t in pairs if s != t)
    if m := _LIST_GROUPS.search(line):
        groups = tuple(tuple(_ints(g)) for g in re.findall(r"\{([\d,]*)\}", m["groups"]))
        return groups if any(groups) else None  # replica_groups={}: all devices
    if m := _IOTA_GROUPS.search(line):
        return tuple(map(tuple, _iota(_ints(m["dims"]), _ints(m["reshape"]), _ints(m["perm"])).tolist()))
    if m := _MESH_GROUPS.search(line):
        return tuple(map(tuple, _mesh_form_groups(m).tolist()))
    return None


def parse(hlo_text: str) -> list[Collective]:
    """Every collective of one run of the HLO, in program order (async pairs once, at their -done)."""
    out, started = [], {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.search(line) if _MENTIONS_A_KIND.search(line) else None
        if m is None:
            continue
        if m["phase"] == "-start":
            started[m["name"]] = device_groups(line)
            continue
        groups = started.get(m["operands"].strip().lstrip("%")) if m["phase"] == "-done" else device_groups(line)
        out.append(Collective(m["kind"], shape_bytes(m["shape"]), groups))
    return out


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """{kind: bytes, ..., 'total': bytes} of collective results per device, for one run of the HLO."""
    return bytes_by_kind(parse(hlo_text))


def bytes_by_kind(collectives: list[Collective]) -> dict[str, int]:
    """{kind: bytes, ..., 'total': bytes} of parsed collectives."""
    out = dict.fromkeys(KINDS, 0)
    for c in collectives:
        out[c.kind] += c.bytes
    out["total"] = sum(out.values())
    return out


def spanned_axes(groups, mesh_shape: dict[str, int]) -> tuple[str, ...]:
    """Mesh axes whose coordinate varies within some group (mesh order; axes of size 1 never vary).

    `mesh_shape`: axis name -> size, in the mesh's order (`dict(mesh.shape)`).
    """
    sizes = tuple(mesh_shape.values())
    if groups is None:
        return tuple(a for a, n in mesh_shape.items() if n > 1)
    varies = np.zeros(len(sizes), bool)
    for group in groups:
        coords = np.array(np.unravel_index(np.asarray(group), sizes))  # (axes, members)
        varies |= (coords != coords[:, :1]).any(axis=1)
    return tuple(a for a, v in zip(mesh_shape, varies) if v)


def group_size(groups, num_devices: int) -> int:
    """Devices per group (the n of a ring); collective-permute pairs count 2, or 1 if all are local."""
    return num_devices if groups is None else max((len(g) for g in groups), default=1)
