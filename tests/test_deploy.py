"""deploy/: the Kubernetes manifest stays consistent with what jaxdist.main reads, and its wiring runs."""
import pathlib
import socket
import subprocess
import sys

import yaml

from jaxdist.distributed import ENV
from tests.conftest import REPO

MANIFEST = REPO / "deploy" / "k8s" / "jobset.yaml"


def _workers():
    jobset = yaml.safe_load(MANIFEST.read_text())
    (replicated,) = jobset["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    return jobset, replicated, job, container


def test_manifest_matches_the_entrypoint():
    jobset, replicated, job, container = _workers()
    env = {e["name"]: e for e in container["env"]}
    assert container["command"] == ["python", "-m", "jaxdist.main"]
    assert set(ENV.values()) <= set(env)  # every variable jaxdist.main reads is set
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"]
    assert int(env[ENV["num_processes"]]["value"]) == job["parallelism"]
    rank = env[ENV["process_id"]]["valueFrom"]["fieldRef"]["fieldPath"]
    assert rank == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    host, port = env[ENV["coordinator_address"]]["value"].rsplit(":", 1)
    name = jobset["metadata"]["name"]
    assert host == f"{name}-{replicated['name']}-0-0.{name}"  # pod 0 of job 0 behind the JobSet's headless Service
    assert {"containerPort": int(port)} in container["ports"]


def test_manifest_wiring_runs_locally(tmp_path, cli_env):
    """Two processes started with exactly the manifest's command and environment, the Service name of
    pod 0 mapped to 127.0.0.1 and the completion index as rank (what Kubernetes would fill in)."""
    _, _, job, container = _workers()
    env = {e["name"]: e.get("value") for e in container["env"]}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env[ENV["coordinator_address"]] = f"127.0.0.1:{port}"
    # The manifest's arguments with the config and workdir swapped for a tiny local run.
    args = ["--config=configs/digits_dp.py", f"--workdir={tmp_path}"]
    args += [a for a in container["args"] if not a.startswith(("--config=", "--workdir="))]
    args += ["--config.cpu_devices=4",
             "--config.total_steps=4", "--config.schedule.warmup_steps=1", "--config.log_every=2"]
    procs = []
    for index in range(job["parallelism"]):
        process_env = {**cli_env, **{k: v for k, v in env.items() if v is not None}, ENV["process_id"]: str(index)}
        process_env.pop("TFDS_DATA_DIR")
        procs.append(subprocess.Popen([sys.executable, "-m", *container["command"][2:], *args], cwd=REPO,
                                      env=process_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "done: 4 steps" in outputs[0] and (tmp_path / "metrics.jsonl").exists()
    assert (pathlib.Path(tmp_path) / "checkpoints" / "4").is_dir()
