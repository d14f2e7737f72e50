"""The parallel report (parallel/report.py) and the collective-group parser under it (parallel/collectives.py)."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import shard_map
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdist.parallel import chips, report
from jaxdist.parallel.collectives import device_groups, parse, spanned_axes
from jaxdist.parallel.mesh import build_mesh
from jaxdist.train import loop
from jaxdist.train.window import TrainWindow
from tests.helpers import tiny_config

SHAPE_DP4_TP2 = dict(stage=1, data=4, fsdp=1, spatial=1, model=2)


def _report(mesh, **overrides):
    exp = loop.build_experiment(tiny_config("cnn", mesh, **overrides))
    lowered = loop.lower_train_step(exp)["step"]
    return report.build(exp, lowered.compile(), report.model_flops(lowered))


@pytest.fixture(scope="module")
def reports():
    return {"data8": _report(dict(data=8), **{"report.peak_flops_per_s": 1e12}),
            "fsdp8": _report(dict(fsdp=8)), "tp": _report(dict(data=4, model=2))}


def _rows(rep, kind):
    return {tuple(r["axes"]): r for r in rep["collectives"] if r["kind"] == kind}


def test_data_parallel_all_reduces_the_gradients_over_data(reports):
    rep = reports["data8"]
    assert [(r["kind"], r["axes"], r["group_size"]) for r in rep["collectives"]] == [("all-reduce", ["data"], 8)]
    grads = rep["bytes_per_device"]["params"]  # DP: each device reduces a full copy of the gradients
    assert abs(_rows(rep, "all-reduce")[("data",)]["bytes"] - grads) <= 0.05 * grads
    assert rep["collective_bytes_by_axes"] == {"data": rep["collective_bytes_per_step"]["total"]}


def test_fsdp_holds_an_eighth_of_the_params_per_device(reports):
    dp, fsdp = reports["data8"]["bytes_per_device"], reports["fsdp8"]["bytes_per_device"]
    assert fsdp["params"] <= 0.13 * dp["params"] and fsdp["opt_state"] <= 0.13 * dp["opt_state"]
    assert fsdp["total"] < dp["total"]
    assert {tuple(r["axes"]) for r in reports["fsdp8"]["collectives"]} == {("fsdp",)}


def test_tensor_parallel_reduces_gradients_over_data_and_activations_over_model(reports):
    rep = reports["tp"]
    assert {tuple(r["axes"]) for r in rep["collectives"]} == {("data",), ("model",)}
    grads = rep["bytes_per_device"]["params"]  # half the params per device; their gradients reduce over data
    assert abs(_rows(rep, "all-reduce")[("data",)]["bytes"] - grads) <= 0.05 * grads
    assert _rows(rep, "all-reduce")[("model",)]["group_size"] == 2


def test_flops_per_device_as_compiled_and_model_flops_of_the_whole_step(reports):
    dp, fsdp = reports["data8"], reports["fsdp8"]
    assert dp["model_flops_per_step"] == fsdp["model_flops_per_step"] > 0  # the mesh does not change the model
    # Each device computes its eighth of the batch plus replicated work (DP's optimizer update).
    assert dp["model_flops_per_step"] / 8 < dp["flops_per_step_per_device"] < dp["model_flops_per_step"] / 2


def test_flops_match_a_hand_count_for_a_sharded_matmul():
    mesh = build_mesh(dict(data=8))
    x = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    w = jax.ShapeDtypeStruct((32, 16), jnp.float32, sharding=NamedSharding(mesh, P()))
    lowered = jax.jit(jnp.matmul).lower(x, w)
    assert lowered.compile().cost_analysis()["flops"] == 2 * 64 * 32 * 16 / 8  # per device
    assert report.model_flops(lowered) == 2 * 64 * 32 * 16  # the whole matmul


@pytest.fixture
def no_backend_cost_analysis(monkeypatch):
    # On CUDA and TPU (PJRT C API backends) Lowered.cost_analysis() returns None, and Compiled's may; a run
    # there crashed at its report (docs/benchmarks.md, "On one GPU"). Both as jax gives them there:
    monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", lambda self: None)
    monkeypatch.setattr(jax.stages.Compiled, "cost_analysis", lambda self: None)


def test_without_the_backends_cost_analysis_the_host_counts_the_model_flops(reports, no_backend_cost_analysis):
    exp = loop.build_experiment(tiny_config("cnn", dict(data=8), **{"report.peak_flops_per_s": 1e12}))
    train_steps, _, model_flops = loop.compile_steps(exp)
    rep = loop.parallel_report(exp, train_steps, model_flops)
    # The CPU backend's count of the same lowered step: what the backend's own analysis gave (the fixture's
    # report, built before the patch), so MFU is there on a backend that analyses no lowered program.
    assert model_flops == rep["model_flops_per_step"] == reports["data8"]["model_flops_per_step"] > 0
    assert rep["flops_per_step_per_device"] is None  # the compiled, per-device count has no such stand-in
    assert rep["ideal_step_s"] == pytest.approx(model_flops / 8 / 1e12)
    assert report.mfu(rep, 2 * rep["ideal_step_s"]) == pytest.approx(0.5)
    line = [line for line in report.table(rep) if line.startswith("flops per step")]
    assert line == [f"flops per step: no cost analysis from this backend, {model_flops / 1e9:.3f} GFLOP model total; "
                    "peak 1.0 TFLOP/s per device (config.report.peak_flops_per_s)"]


def test_with_no_cost_analysis_anywhere_the_report_has_no_flops(no_backend_cost_analysis, monkeypatch, caplog):
    # A process whose JAX_PLATFORMS leaves out cpu, or a jax that moved the private call: no CPU backend here.
    def no_cpu_backend(backend=None, **kwargs):
        raise RuntimeError(f"Unknown backend {backend}")
    monkeypatch.setattr(jax, "local_devices", no_cpu_backend)
    exp = loop.build_experiment(tiny_config("cnn", dict(data=8), **{"report.peak_flops_per_s": 1e12}))
    train_steps, _, model_flops = loop.compile_steps(exp)
    rep = loop.parallel_report(exp, train_steps, model_flops)
    assert model_flops is None and rep["model_flops_per_step"] is None and rep["flops_per_step_per_device"] is None
    assert rep["ideal_step_s"] is None and report.mfu(rep, 0.1) is None  # no FLOPs, no MFU, even with a peak
    assert rep["collectives"] and rep["bytes_per_device"]["temp"] > 0  # the rest of the report is still there
    assert "flops per step: no cost analysis from this backend; peak 1.0 TFLOP/s" in "\n".join(report.table(rep))
    assert "no model FLOPs (hence no MFU)" in caplog.text and "Unknown backend cpu" in caplog.text


def test_mfu_from_a_configured_peak_and_none_for_an_unknown_chip(reports):
    rep = reports["data8"]
    assert rep["peak_flops_per_s_per_device"] == 1e12 and rep["peak_source"] == "config.report.peak_flops_per_s"
    assert rep["ideal_step_s"] == pytest.approx(rep["model_flops_per_step"] / 8 / 1e12)
    assert report.mfu(rep, 2 * rep["ideal_step_s"]) == pytest.approx(0.5)
    cpu = reports["fsdp8"]
    assert cpu["peak_flops_per_s_per_device"] is None and "unknown chip 'cpu'" in cpu["peak_source"]
    assert cpu["ideal_step_s"] is None and report.mfu(cpu, 0.1) is None


def test_train_window_reports_mfu_only_with_a_peak():
    def summary(ideal_step_s):
        window = TrainWindow(batch_size=16, total_steps=10, nan_policy="off", ideal_step_s=ideal_step_s)
        start = time.perf_counter()
        for step in (1, 2):
            window.add(step, {"loss": 1.0, "accuracy": 0.5})
        time.sleep(0.01)
        record, console = window.summary(2)
        return record, console, time.perf_counter() - start
    record, console, elapsed = summary(0.001)
    assert 2 * 0.001 / elapsed <= record["mfu"] <= 2 * 0.001 / 0.01 and "MFU" in console
    record, console, _ = summary(None)
    assert "mfu" not in record and "MFU" not in console


def test_chip_table_detects_device_kinds():
    assert chips.detect("NVIDIA H100 80GB HBM3").name == "h100"
    assert chips.detect("NVIDIA A100-SXM4-40GB").name == "a100"
    assert chips.detect("TPU v5 lite").name == "tpu_v5e" and chips.detect("TPU v5p").name == "tpu_v5p"
    assert chips.detect("NVIDIA H100 PCIe") is None and chips.detect("cpu") is None
    assert chips.peak_flops_per_s(chips.CHIPS["h100"], "bfloat16") == 989.5e12
    assert chips.peak_flops_per_s(chips.CHIPS["h100"], "float32") == 494.5e12  # TF32, JAX's default for f32 dots


# --- Device groups and the mesh axes they span


def test_list_groups_and_all_devices():
    shape = dict(data=2, fsdp=2, model=2)
    assert spanned_axes(device_groups("replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add"), shape) == ("model",)
    assert spanned_axes(device_groups("replica_groups={{0,2},{1,3},{4,6},{5,7}}"), shape) == ("fsdp",)
    assert device_groups("replica_groups={}, to_apply=%add") is None
    assert spanned_axes(None, shape) == ("data", "fsdp", "model")


def test_iota_groups_with_and_without_transpose():
    assert device_groups("replica_groups=[2,4]<=[8], to_apply=%add") == ((0, 1, 2, 3), (4, 5, 6, 7))
    groups = device_groups("replica_groups=[4,2]<=[4,2]T(1,0), use_global_device_ids=true")
    assert groups == ((0, 2), (4, 6), (1, 3), (5, 7))  # iota(8) as 4x2, transposed, then rows of 2
    assert spanned_axes(groups, SHAPE_DP4_TP2) == ("data",)
    groups = device_groups("replica_groups=[4,2]<=[2,2,2]T(2,1,0), use_global_device_ids=true")
    assert groups == ((0, 4), (2, 6), (1, 5), (3, 7))
    assert spanned_axes(groups, dict(data=2, fsdp=2, model=2)) == ("data",)


def test_mesh_axes_groups_with_device_order_and_sub_axes():
    # Mesh a=4 x b=2 over devices [0,4,1,5,2,6,3,7]; the minor half of 'a' (pre-size 2, size 2) groups.
    line = "replica_groups=mesh['a'=4,'b'=2], device_ids=([2,4]T(1,0)) {'a':(2)2}, use_global_device_ids=true"
    assert device_groups(line) == ((0, 1), (4, 5), (2, 3), (6, 7))
    assert device_groups("replica_groups=mesh['a'=4,'b'=2] {'b'}, dimensions={0}") == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert device_groups("replica_groups=mesh['a'=4,'b'=2] {'a'}") == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert device_groups("replica_groups=mesh['a'=4,'b'=2], device_ids=(0,2,4,6,1,3,5,7) {'b'}") == \
        ((0, 2), (4, 6), (1, 3), (5, 7))


def test_collective_permute_pairs_and_async_pairs():
    hlo = "\n".join([
        "  %cp = f32[4]{0} collective-permute(%y), source_target_pairs={{0,0},{1,4},{4,1},{2,2}}",
        "  %ag-start = (f32[8]{0}, f32[16]{0}) all-gather-start(%p), replica_groups=[4,2]<=[8], dimensions={0}",
        "  %ag-done = f32[16]{0} all-gather-done(%ag-start)",
    ])
    permute, gather = parse(hlo)
    assert permute.groups == ((1, 4), (4, 1)) and spanned_axes(permute.groups, SHAPE_DP4_TP2) == ("data", "model")
    assert gather.kind == "all-gather" and gather.bytes == 64 and gather.groups == ((0, 1), (2, 3), (4, 5), (6, 7))


def _spans(fn, mesh, *args) -> list[tuple[str, tuple[str, ...]]]:
    return [(c.kind, spanned_axes(c.groups, dict(mesh.shape))) for c in parse(jax.jit(fn).lower(*args).compile().as_text())]


def test_logical_ids_follow_the_mesh_device_order():
    """A psum over 'model' on a mesh whose devices are listed backwards still reads as over 'model'."""
    devices = np.array(jax.devices()[::-1]).reshape(2, 2, 2)
    mesh = Mesh(devices, ("data", "fsdp", "model"), axis_types=(AxisType.Auto,) * 3)
    x = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp", "model"))))
    for axes in (("model",), ("data",), ("data", "model")):
        psum = shard_map(lambda a, axes=axes: jax.lax.psum(a, axes), mesh=mesh, in_specs=P(("data", "fsdp", "model")),
                         out_specs=P(("data", "fsdp", "model")))
        assert _spans(psum, mesh, x) == [("all-reduce", axes)]


def test_gspmd_collectives_of_sharded_matmuls_on_a_jaxdist_mesh():
    mesh = build_mesh(SHAPE_DP4_TP2)
    x = jax.ShapeDtypeStruct((16, 64), jnp.float32, sharding=NamedSharding(mesh, P("data", "model")))
    w = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P("model", None)))
    row_parallel = jax.jit(jnp.matmul, out_shardings=NamedSharding(mesh, P("data", None)))
    assert _spans(row_parallel, mesh, x, w) == [("all-reduce", ("model",))]
    x = jax.ShapeDtypeStruct((16, 64), jnp.float32, sharding=NamedSharding(mesh, P("data", None)))
    w = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P(None, "model")))
    gathered = jax.jit(jnp.matmul, out_shardings=NamedSharding(mesh, P()))  # XLA prints these in the mesh form
    assert sorted(_spans(gathered, mesh, x, w)) == [("all-gather", ("data",)), ("all-gather", ("model",))]


def test_every_group_of_a_hybrid_train_step_partitions_the_devices():
    """The forms XLA prints in one real step (data=2 x fsdp=2 x model=2) decode to groups covering each device
    once."""
    exp = loop.build_experiment(tiny_config("cnn", dict(data=2, fsdp=2, model=2)))
    hlo = loop.compile_train_step(exp)["step"].as_text()
    assert "device_ids=(" in hlo and "<=[" in hlo and "replica_groups={{" in hlo
    collectives = parse(hlo)
    assert len(collectives) > 10
    for c in collectives:
        if c.kind != "collective-permute":
            assert sorted(d for g in c.groups for d in g) == list(range(8)), c
