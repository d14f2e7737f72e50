"""The mesh planner: compile the train step for every mesh shape over N devices, rank them by a roofline.

Each candidate is the real compiled step (same model, rules, optimizer as training), so its memory,
collectives and FLOPs are the parallel report's (report.py), not estimates; only the step *time* is a
model (roofline.py). Meshes the config cannot run on (e.g. a batch the batch axes do not divide) are
skipped with the reason. The command line is jaxdist/plan.py; docs/planner.md has the cost model.
"""
import dataclasses
import time

from jaxdist.config import MESH_AXES
from jaxdist.errors import ConfigError
from jaxdist.models import registry
from jaxdist.parallel import collectives as collectives_lib
from jaxdist.parallel import report as report_lib
from jaxdist.parallel import roofline
from jaxdist.train import loop


def supported_axes(config) -> tuple[str, ...]:
    """Mesh axes worth searching for this model: data, fsdp and model always; spatial for image models
    (not sequences); stage only for models that stack identical blocks (registry.STACKED_MODELS)."""
    name = config.model.name
    wanted = {"data", "fsdp", "model"}
    if name not in registry.SEQUENCE_MODELS:
        wanted.add("spatial")
    if name in registry.STACKED_MODELS:
        wanted.add("stage")
    return tuple(a for a in MESH_AXES if a in wanted)


def factorizations(n: int, axes: tuple[str, ...]) -> list[dict[str, int]]:
    """Every assignment of sizes to `axes` whose product is n (axes not listed get 1), in a fixed order."""
    if not axes:
        return [{}] if n == 1 else []
    first, rest = axes[0], axes[1:]
    return [{first: d, **tail} for d in range(1, n + 1) if n % d == 0 for tail in factorizations(n // d, rest)]


def describe(sizes: dict[str, int]) -> str:
    return " ".join(f"{a}={n}" for a, n in sizes.items() if n > 1) or "1 device"


@dataclasses.dataclass
class Candidate:
    mesh: dict[str, int]  # every mesh axis, 1 where unused
    skipped: str | None = None  # why the config cannot run on it
    report: dict | None = None
    collectives: list = dataclasses.field(default_factory=list)
    compile_s: float = 0.0


def evaluate(config, sizes: dict[str, int], devices) -> Candidate:
    """Compile the train step of `config` on the mesh `sizes` over `devices` (report only; nothing runs)."""
    mesh = {a: sizes.get(a, 1) for a in MESH_AXES}
    c = config.copy_and_resolve_references()
    c.mesh.update(mesh)
    try:
        exp = loop.build_experiment(c, devices)
    except ConfigError as e:
        return Candidate(mesh, skipped=str(e))
    t = time.perf_counter()
    compiled = loop.compile_train_step(exp)[exp.sync.variants[-1]]  # the one with the most communication
    compile_s = time.perf_counter() - t
    return Candidate(mesh, report=report_lib.build(exp, compiled), compile_s=compile_s,
                     collectives=collectives_lib.parse(compiled.as_text()))


def plan(config, devices, axes: tuple[str, ...], progress=lambda line: None) -> list[Candidate]:
    """Every mesh over `devices` along `axes`, compiled one by one (`progress` gets a line for each)."""
    meshes = factorizations(len(devices), axes)
    out = []
    for i, sizes in enumerate(meshes, 1):
        candidate = evaluate(config, sizes, devices)
        progress(f"[{i}/{len(meshes)}] {describe(candidate.mesh)}: " +
                 (f"skipped ({candidate.skipped})" if candidate.skipped else f"compiled in {candidate.compile_s:.1f}s"))
        out.append(candidate)
    return out


def rank(candidates: list[Candidate], machine: roofline.Machine, memory_bytes: float = 0) -> list[dict]:
    """Rows best first: meshes whose step fits `memory_bytes` per device (0 = no budget; the report's
    `total`: arguments + outputs - aliased + temporaries) by predicted step time,
    then those that do not fit, by time; skipped meshes last, with their reason."""
    rows = []
    for cand in candidates:
        row = {"mesh": cand.mesh, "name": describe(cand.mesh)}
        if cand.skipped:
            rows.append({**row, "skipped": cand.skipped})
            continue
        rep, n = cand.report, cand.report["devices"]
        compute_s, comm_s = roofline.step_seconds(rep["flops_per_step_per_device"], cand.collectives, n, machine)
        comm_bytes, inter_host = {}, set()
        for c in cand.collectives:
            key = "+".join(collectives_lib.spanned_axes(c.groups, rep["mesh"])) or "none"
            comm_bytes[key] = comm_bytes.get(key, 0) + c.bytes
            if roofline.crosses_hosts(c.groups, n, machine.hosts):
                inter_host.add(key)
        total = rep["bytes_per_device"]["total"]
        rows.append({**row, "skipped": None, "bytes_per_device": rep["bytes_per_device"],
                     "fits": not memory_bytes or total <= memory_bytes,
                     "flops_per_step_per_device": rep["flops_per_step_per_device"],
                     "comm_bytes_by_axes": dict(sorted(comm_bytes.items())), "inter_host_axes": sorted(inter_host),
                     "compute_s": compute_s, "comm_s": comm_s, "predicted_step_s": compute_s + comm_s})
    return sorted(rows, key=lambda r: (r["skipped"] is not None, not r.get("fits"), r.get("predicted_step_s", 0)))


def table(rows: list[dict]) -> list[str]:
    """The ranked rows as text: memory (MiB per device), fit, FLOPs, communication by axes, times."""
    head = (f"{'rank':>4}  {'mesh':26s} {'params':>7} {'opt':>7} {'temp':>7} {'total':>7} {'fits':>4}  "
            f"{'GFLOP':>7}  {'compute':>8} {'comm':>8} {'step':>8}  comm MiB/step by axes (* = between hosts)")
    lines = [head, f"{'':4}  {'':26s} {'MiB per device':>31} {'':4}  {'/device':>7}  {'ms':>8} {'ms':>8} {'ms':>8}"]
    ranked = 0
    for r in rows:
        if r["skipped"]:
            lines.append(f"{'-':>4}  {r['name']:26s} skipped: {r['skipped']}")
            continue
        ranked += 1
        b = {k: v / 2**20 for k, v in r["bytes_per_device"].items()}
        comm = ", ".join(f"{axes}{'*' if axes in r['inter_host_axes'] else ''} {nbytes / 2**20:.3g}"
                         for axes, nbytes in r["comm_bytes_by_axes"].items()) or "none"
        lines.append(f"{ranked if r['fits'] else '-':>4}  {r['name']:26s} {b['params']:7.2f} {b['opt_state']:7.2f} "
                     f"{b['temp']:7.2f} {b['total']:7.2f} {'yes' if r['fits'] else 'NO':>4}  "
                     f"{r['flops_per_step_per_device'] / 1e9:7.3f}  {1e3 * r['compute_s']:8.3f} {1e3 * r['comm_s']:8.3f} "
                     f"{1e3 * r['predicted_step_s']:8.3f}  {comm}")
    return lines

