"""Joining a multi-process run from the environment: which clusters JAX is asked to detect by itself.

jax.distributed.initialize is replaced by a recorder (it would wait for a real cluster); the code under
test, jaxdist.distributed.initialize, runs as it does in jaxdist.main.
"""
import jax
import pytest

from jaxdist import distributed

CLUSTER_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", *distributed.ENV.values())


@pytest.mark.parametrize("variable, value, joins", [
    ("SLURM_NTASKS", "4", True), ("SLURM_NTASKS", "1", False),  # one task: a plain single-process run
    ("OMPI_COMM_WORLD_SIZE", "2", True), ("OMPI_COMM_WORLD_SIZE", "1", False),
    ("TPU_WORKER_HOSTNAMES", "host-a,host-b", True), ("TPU_WORKER_HOSTNAMES", "host-a", False),
    (None, None, False),  # nothing set: one process
])
def test_jax_detects_the_cluster_only_where_there_is_more_than_one_process(variable, value, joins, monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.config, "update", lambda *args: None)  # leave this test process's backends alone
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    if variable:
        monkeypatch.setenv(variable, value)
    distributed.initialize(None, None, None, timeout_s=42)
    assert calls == ([{"initialization_timeout": 42}] if joins else [])
