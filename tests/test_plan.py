"""The mesh planner (jaxdist.plan, jaxdist/planner.py) and its cost model (parallel/roofline.py)."""
import json

import jax
import pytest

from jaxdist import planner
from jaxdist.parallel import roofline
from jaxdist.parallel import sharding as sharding_lib
from jaxdist.parallel.collectives import Collective
from jaxdist.train import loop
from tests.helpers import run_cli, tiny_config


def test_factorizations_cover_every_mesh_once():
    meshes = planner.factorizations(8, ("data", "fsdp", "model"))
    assert len(meshes) == 10 and len({tuple(m.values()) for m in meshes}) == 10  # 3 factors of 2 over 3 axes
    assert all(m["data"] * m["fsdp"] * m["model"] == 8 for m in meshes)
    assert planner.factorizations(1, ("data", "model")) == [{"data": 1, "model": 1}]
    assert len(planner.factorizations(12, ("data", "fsdp"))) == 6  # divisors of 12


def test_supported_axes():
    assert planner.supported_axes(tiny_config("cnn")) == ("data", "fsdp", "spatial", "model")
    assert planner.supported_axes(tiny_config("lstm")) == ("data", "fsdp", "model")  # rows are time steps


def test_roofline_ring_bytes_and_host_boundaries():
    assert roofline.wire_bytes("all-reduce", 1000, 4) == 1500
    assert roofline.wire_bytes("all-gather", 1000, 4) == 750
    assert roofline.wire_bytes("reduce-scatter", 1000, 4) == 3000
    assert roofline.wire_bytes("all-reduce", 1000, 1) == 0
    within, across = ((0, 1), (2, 3)), ((0, 2), (1, 3))
    assert not roofline.crosses_hosts(within, 4, hosts=2) and roofline.crosses_hosts(across, 4, hosts=2)
    machine = roofline.Machine(flops_per_s=1e9, intra_host_bytes_per_s=1e9, inter_host_bytes_per_s=1e8,
                               latency_s=1e-3, hosts=2)
    fast, slow = (Collective("all-reduce", 2000, g) for g in (within, across))
    assert roofline.collective_seconds(fast, 4, machine) == pytest.approx(1e-3 + 2000 / 1e9)
    assert roofline.collective_seconds(slow, 4, machine) == pytest.approx(1e-3 + 2000 / 1e8)
    assert roofline.step_seconds(5e8, [fast, slow], 4, machine) == pytest.approx((0.5, 2e-3 + 2.2e-5))


def _candidate(mesh, flops, total_bytes, collectives=()):
    bytes_per_device = dict(params=1, opt_state=1, batch_stats=0, temp=1, arguments=0, outputs=0, aliased=0,
                            total=total_bytes)
    rep = {"devices": 2, "mesh": {"data": 1, "fsdp": 1, "model": 1, **mesh}, "bytes_per_device": bytes_per_device,
           "flops_per_step_per_device": flops}
    return planner.Candidate(rep["mesh"], report=rep, collectives=list(collectives))


def test_rank_puts_fitting_meshes_first_by_time_then_the_rest_then_skipped():
    machine = roofline.Machine(flops_per_s=1e9, intra_host_bytes_per_s=1e9, inter_host_bytes_per_s=1e9, latency_s=0)
    candidates = [
        planner.Candidate({"data": 1, "fsdp": 2, "model": 1}, skipped="batch_size=3 is not divisible"),
        _candidate({"data": 2}, flops=1e6, total_bytes=900),  # fastest, but too big
        _candidate({"fsdp": 2}, flops=2e6, total_bytes=500, collectives=[Collective("all-gather", 10**6, ((0, 1),))]),
        _candidate({"model": 2}, flops=2e6, total_bytes=500),
    ]
    rows = planner.rank(candidates, machine, memory_bytes=600)
    assert [r["name"] for r in rows] == ["model=2", "fsdp=2", "data=2", "fsdp=2"]
    assert [r.get("fits") for r in rows] == [True, True, False, None]
    assert rows[1]["comm_bytes_by_axes"] == {"fsdp": 10**6} and rows[1]["comm_s"] == pytest.approx(5e-4)
    assert rows[3]["skipped"].startswith("batch_size")
    lines = planner.table(rows)
    assert lines[2].split()[:2] == ["1", "model=2"] and lines[4].split()[0] == "-" and " NO " in lines[4]
    assert "skipped: batch_size=3" in lines[5]


def test_plan_command_refuses_data_parallel_for_a_model_that_fills_the_memory_budget(cli_env):
    """Known answer: the budget is data parallelism's params + optimizer state alone, so DP cannot fit;
    tensor parallelism over 4 devices holds a quarter of them and must come first."""
    config = tiny_config("cnn", dict(data=4))
    exp = loop.build_experiment(config, jax.devices()[:4])
    state_bytes = sum(sharding_lib.bytes_per_device(exp.abstract_state[k], exp.shardings[k])
                      for k in ("params", "opt_state"))
    result = run_cli(cli_env, "--config=configs/digits_dp.py", "--config.batch_size=16", "--devices=4",
                     "--axes=data,model", f"--memory_gb={state_bytes / 2**30}", "--json", module="jaxdist.plan")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)["rows"]
    assert [r["name"] for r in rows][0] == "model=4" and rows[0]["fits"]
    data_parallel = next(r for r in rows if r["name"] == "data=4")
    fitting = [i for i, r in enumerate(rows) if r["fits"]]
    assert not data_parallel["fits"] and rows.index(data_parallel) > max(fitting)  # marked, ranked after the fits
    assert data_parallel["comm_bytes_by_axes"].keys() == {"data"} and data_parallel["predicted_step_s"] > 0
    assert "[3/3] data=4: compiled" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--devices=0"], "--devices=0"),
    (["--devices=4", "--hosts=3"], "--hosts=3 does not divide --devices=4"),
    (["--devices=4", "--axes=data,stage"], "'stage' is not an axis model 'cnn' can use"),
])
def test_plan_refuses_bad_input_in_one_line(cli_env, args, message):
    result = run_cli(cli_env, "--config=configs/digits_dp.py", *args, module="jaxdist.plan")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("jaxdist: error: ") and message in lines[-1], result.stderr[-1000:]
