"""What Ray's runtime environment ships to the nodes: ponder as a wheel with its entry points and only
the job's zoo models; on a local Ray, actors then import that copy and render with it."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from jobfiles import assert_same_outputs

from ponder.errors import ConfigError
from ponder.jobs import parse_job, run_job
from ponder.jobs.ray_env import build_wheel, requirements, runtime_env, ship_mode

JOB = {"defaults": {"modality": "text", "model": "zoo:arith", "options": {"max_new_tokens": 8}},
       "items": [{"id": "a", "prompt": "Q: 1+2\n", "n": 2, "strategy": "best-of-n", "verifier": "prm"},
                 {"id": "b", "prompt": "Q: 3*4\n", "seed": 3}]}


def test_the_wheel_holds_ponder_its_entry_points_and_only_the_named_zoo_models(tmp_path):
    wheel = build_wheel(parse_job(JOB).items, tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "ponder/__init__.py" in names and "ponder/search/decoding/continuous.py" in names
    assert "ponder/kernels/kv_cache.py" in names and "ponder/demos/render200.yaml" in names
    zoo = {n.split("/")[4] for n in names if n.startswith("ponder/modalities/") and "/zoo/" in n}
    assert zoo == {"arith", "prm"}  # the model and the verifier; no other zoo model, no music weights
    assert not any("__pycache__" in n for n in names)
    points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[ponder.modalities]" in points and "text = ponder.modalities.text.spec:SPEC" in points
    # pip installs it as Ray does (--target), and Python finds ponder and its modalities there
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel), f"--target={target}"],
                   check=True)
    code = ("import importlib.metadata, ponder; from ponder import zoo; "
            "print(ponder.__file__); print(zoo.folder('zoo:arith')); "
            "print(sorted(p.name for p in importlib.metadata.entry_points(group='ponder.modalities')))")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.splitlines()
    assert out[0].startswith(str(target)) and out[1].startswith(str(target)) and "'text'" in out[2]


def test_ship_modes_and_requirements():
    assert ship_mode("auto", None) == "none" and ship_mode("auto", "ray://head:10001") == "all"
    assert ship_mode("code", None) == "code"
    with pytest.raises(ConfigError, match="unknown ship mode 'everything'; use one of auto, code, all, none"):
        ship_mode("everything", None)
    lines = requirements()
    assert any(line.startswith("torch==2.9.1") for line in lines) and not any("ray" in line for line in lines)


def test_all_adds_the_requirements_and_none_ships_nothing(tmp_path):
    items = parse_job(JOB).items
    assert runtime_env(items, "none", tmp_path) is None
    env = runtime_env(items, "all", tmp_path)
    assert env["py_modules"][0].endswith(".whl") and env["pip"] == requirements()


def test_a_local_ray_renders_with_the_shipped_copy(tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is part of the dev install; CI has it")
    from ponder.jobs.ray_backend import _RenderActor

    job = parse_job(JOB)
    run_job(job, tmp_path / "local", threads=1, progress=False)
    # ponder starts the (local) Ray itself, with the shipped wheel as the job's runtime environment
    summary = run_job(job, tmp_path / "ray", backend="ray", workers=1, ship="code", progress=False)
    assert (summary.done, summary.failed) == (2, 0)
    assert_same_outputs(tmp_path / "ray", tmp_path / "local")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env=runtime_env(job.items, "code", tmp_path / "again"))
    try:
        actor = ray.remote(num_cpus=1)(_RenderActor).remote(1)
        assert "runtime_resources" in ray.get(actor.origin.remote())  # the shipped copy, not this checkout
        # a Ray this process joined before cannot be given files any more: one clear error
        with pytest.raises(ConfigError, match="ship='code' needs ponder to start the Ray connection"):
            run_job(job, tmp_path / "again-out", backend="ray", workers=1, ship="code", progress=False)
        assert not (tmp_path / "again-out").exists()  # refused before anything was written
    finally:
        ray.shutdown()
