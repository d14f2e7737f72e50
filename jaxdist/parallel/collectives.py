"""Bytes moved by collectives in one compiled step, read off its HLO text (`compiled.as_text()`).

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
the `-start` result is a tuple that also carries the operand and bookkeeping scalars. Collectives
wrapped in `async-start`/`async-done` are counted once through the wrapped instruction itself.

What it does not see: it is a static count, so a collective inside a while loop (e.g. the
grad-accumulation scan) counts once, not once per trip; collectives inside a conditional count
whether or not the branch runs; and anything outside this one program (host transfers, the
multi-process gloo/MPI layer's own framing, a separate eval step) is not included.
"""
import math
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# Bits per element of each HLO primitive type that can appear in a collective's result.
_BITS = {
    "pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16,
    "s32": 32, "u32": 32, "s64": 64, "u64": 64, "f16": 16, "bf16": 16, "f32": 32, "f64": 64,
    "c64": 64, "c128": 128, "token": 0,
}

# `[ROOT] %name = <result shape> <opcode>(operands), attributes`; the opcode may carry -start/-done.
_INSTRUCTION = re.compile(
    r"=\s*(?P<shape>.+?)\s+(?P<kind>" + "|".join(KINDS) + r")(?P<phase>-start|-done)?\(")
# One array shape inside the result: dtype and dims, e.g. f32[128,10] or bf16[] (layouts ignored).
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+[0-9]*(?:e[0-9]+m[0-9]+[a-z]*)?)\[(?P<dims>[^\]]*)\]")


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


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """{kind: bytes, ..., 'total': bytes} of collective results per device, for one run of the HLO."""
    out = dict.fromkeys(KINDS, 0)
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.search(line)
        if m is None or m["phase"] == "-start":
            continue
        out[m["kind"]] += shape_bytes(m["shape"])
    out["total"] = sum(out.values())
    return out
