"""Data parallel and FSDP on 8 fake CPU devices, checkpoints moved between meshes, and a 2-process run.

The main pytest process already initialized jax with one device, so every multi-device check runs in a subprocess
with XLA_FLAGS=--xla_force_host_platform_device_count=N, in conftest's `jax_env` (a persistent compilation cache
turns repeated compiles of the same programs into disk reads).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from testbed import config as C
from testbed import sharding
from testbed.preempt import REQUEUE_EXIT

from .conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
FAST = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "data.seq_len=32", "train.batch_size=8",
        "data.eval_sequences=16", "optim.lr=1e-2", "optim.warmup_steps=2", "train.sigma_every=0"]
RTOL = 1e-5


def run_on_devices(env: dict, code: str, devices: int = 8) -> dict:
    """Runs `code` in a fresh interpreter with `devices` fake CPU devices; returns the JSON of its last line."""
    env = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def losses(run_dir) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    assert a == pytest.approx(b, rel=RTOL)


def checkpoint_specs(ckpt_dir) -> dict:
    """The partition specs orbax recorded for a few leaves of a saved train state (read from metadata only)."""
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(ckpt_dir.absolute() / "default")
    tree = getattr(meta, "item_metadata", meta)
    leaves = {"qkv": tree["params"]["block_0"]["attn"]["qkv"]["kernel"],
              "embedding": tree["params"]["embed"]["embedding"],
              "norm": tree["params"]["final_norm"]["RMSNorm_0"]["scale"],
              "step": tree["step"]}
    return {k: tuple(v.sharding.partition_spec) for k, v in leaves.items()}


# --- config and spec rules (no devices needed) ---------------------------------------------------------------

def test_mesh_shape_and_param_specs():
    assert sharding.mesh_shape({}, 1) == (1, 1)
    assert sharding.mesh_shape({"data": -1}, 8) == (8, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4)
    with pytest.raises(C.ConfigError, match="train.mesh"):
        sharding.mesh_shape({"data": 3}, 8)
    with pytest.raises(C.ConfigError, match="train.mesh"):
        sharding.mesh_shape({"data": 3, "fsdp": -1}, 8)
    P = sharding.PartitionSpec
    assert sharding.param_spec((32, 96), 4) == P(None, "fsdp")  # the largest dimension that divides
    assert sharding.param_spec((256, 30), 4) == P("fsdp", None)
    assert sharding.param_spec((30, 6), 4) == P()  # nothing divides: replicated
    assert sharding.param_spec((32,), 4) == P()  # vectors stay replicated
    assert sharding.param_spec((32, 96), 1) == P()  # data parallel: everything replicated
    for bad, key in (("train.mesh.model=2", "train.mesh.model"), ("train.mesh.data=0", "train.mesh.data"),
                     ("train.distributed=maybe", "train.distributed")):
        with pytest.raises(C.ConfigError, match=key):
            C.load(TINY, [bad])
    with pytest.raises(C.ConfigError, match="at most one axis"):
        C.load(TINY, ["train.mesh.data=-1", "train.mesh.fsdp=-1"])


def test_distributed_detection():
    assert not sharding.wants_distributed(None, {})
    assert not sharding.wants_distributed(None, {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"})  # one task: one process
    assert not sharding.wants_distributed(None, {"SLURM_NTASKS": "4"})  # an salloc shell: no job step
    assert sharding.wants_distributed(None, {"SLURM_NTASKS": "4", "SLURM_STEP_ID": "0", "SLURM_PROCID": "2"})
    assert sharding.wants_distributed(None, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert sharding.wants_distributed(None, {"TPU_WORKER_HOSTNAMES": "t0,t1"})
    step = {"SLURM_NTASKS": "4", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0"}
    assert sharding.wants_distributed(True, {}) and not sharding.wants_distributed(False, step)


def test_mesh_is_placement_not_identity(tmp_path):
    """Run ids and the resume check ignore train.mesh: a run resumes on another mesh, sweeps keep their ids."""
    from testbed.launch import sweep
    from testbed.launch.cli import default_run_dir

    from testbed.runstore import RunDir

    base = C.load(TINY, FAST)
    fsdp = C.load(TINY, [*FAST, "train.mesh.fsdp=8", "train.distributed=true"])
    assert sweep.run_id(base) == sweep.run_id(fsdp) and default_run_dir(base, "x") == default_run_dir(fsdp, "x")
    placement = "  mesh: {}\n  distributed: null\n  platform: auto\n  attention: auto\n"
    old_yaml = (C.dump_yaml(base).replace(placement, "")  # the YAML before these keys
                .replace("  checkpoint_steps: []\n  branch_from: null\n  branch_step: null\n", "")
                .replace("  trackers:\n  - jsonl\n  wandb_project: testbed\n  wandb_mode: null\n", "")
                .replace("  name: adamw\n", "").replace("  muon_momentum: 0.95\n  ns_steps: 5\n", ""))
    assert C.identity_yaml(base) == old_yaml
    RunDir(tmp_path).check_or_write_config(fsdp)
    RunDir(tmp_path).check_or_write_config(base)  # no error: same run, other placement
    with pytest.raises(C.ConfigError, match="optim.lr"):
        RunDir(tmp_path).check_or_write_config(C.load(TINY, [*FAST, "optim.lr=0.5"]))


# --- 8 fake devices ---------------------------------------------------------------------------------------------

def test_dp_and_fsdp_match_the_single_device_run(jax_env, tmp_path):
    result = run_on_devices(jax_env, f"""
        import json, jax
        from testbed import config as C
        from testbed.train import train
        out = {{}}
        for name, mesh in (("single", []), ("dp", ["train.mesh.data=-1"]),
                           ("fsdp", ["train.mesh.data=2", "train.mesh.fsdp=4"])):
            cfg = C.load({str(TINY)!r}, {[*FAST, "train.steps=5", "train.eval_every=5", "train.checkpoint_every=5"]!r}
                         + mesh)
            s = train(cfg, {str(tmp_path)!r} + "/" + name, progress=False, log=lambda _: None)
            out[name] = {{"status": s["status"], "mesh": s.get("mesh"), "eval": s["final_eval_loss"]}}
        print(json.dumps({{"devices": jax.device_count(), **out}}))
    """)
    assert result["devices"] == 8
    assert result["single"]["mesh"] is None
    assert result["dp"]["mesh"] == {"data": 8, "fsdp": 1} and result["fsdp"]["mesh"] == {"data": 2, "fsdp": 4}
    ref = losses(tmp_path / "single")
    for name in ("dp", "fsdp"):
        assert result[name]["status"] == "completed"
        assert_close(losses(tmp_path / name), ref)
        assert result[name]["eval"] == pytest.approx(result["single"]["eval"], rel=RTOL)
    # the shardings were applied: orbax recorded them with the saved state
    assert checkpoint_specs(tmp_path / "fsdp" / "checkpoints" / "5") == {
        "qkv": (None, "fsdp"), "embedding": ("fsdp", None), "norm": (), "step": ()}
    assert checkpoint_specs(tmp_path / "dp" / "checkpoints" / "5") == {
        "qkv": (), "embedding": (), "norm": (), "step": ()}


def test_placement_shards_state_batch_and_step_outputs(jax_env):
    """Adam moments follow their params; batches split over data x fsdp; the jitted step keeps the layout."""
    result = run_on_devices(jax_env, f"""
        import json, jax, numpy as np
        from testbed import config as C, sharding
        from testbed.optim import make_optimizer
        from testbed.model import init_params, param_info
        from testbed.train import init_state, make_train_step
        cfg = C.load({str(TINY)!r}, {[*FAST, "train.steps=2", "train.mesh.data=2", "train.mesh.fsdp=4"]!r})
        place = sharding.placement(cfg)
        params = init_params(cfg, jax.random.key(0))
        tx = make_optimizer(cfg, param_info(params))
        state = init_state(cfg, tx, params)
        state = place.put(state, place.state_shardings(state))
        batch = place.batch(np.zeros((1, 8, 33), np.int32), axis=1)
        step = place.jit_step(make_train_step(cfg, tx), state, (1, 8, 33))
        new, metrics = step(state, batch)
        spec = lambda x: [str(a) for a in x.sharding.spec]
        mu = new["opt_state"]
        mus = [x for x in jax.tree.leaves(mu) if getattr(x, "shape", ()) == (32, 96)]
        print(json.dumps({{"qkv": spec(new["params"]["block_0"]["attn"]["qkv"]["kernel"]),
                          "moments": [spec(x) for x in mus], "batch": spec(batch),
                          "loss": spec(metrics["train_loss"]), "shards": len(batch.addressable_shards)}}))
    """)
    assert result["qkv"] == ["None", "fsdp"]
    assert result["moments"] == [["None", "fsdp"]] * 2  # Adam's mu and nu
    assert result["batch"] == ["None", "('data', 'fsdp')", "None"] and result["shards"] == 8
    assert result["loss"] == []


def test_checkpoint_saved_on_one_mesh_resumes_on_another(jax_env, tmp_path):
    """Saved on an 8-way FSDP mesh at step 3; resumed on data 2 x fsdp 4 and on one device: the same curve."""
    sets = [*FAST, "train.steps=6", "train.eval_every=3", "train.checkpoint_every=5"]
    result = run_on_devices(jax_env, f"""
        import json, shutil
        from testbed import config as C
        from testbed.train import train
        load = lambda *mesh: C.load({str(TINY)!r}, {sets!r} + list(mesh))
        quiet = lambda _: None
        root = {str(tmp_path)!r}
        full = train(load(), root + "/full", progress=False, log=quiet)
        polls = iter(range(1000))
        cut = train(load("train.mesh.fsdp=8"), root + "/dp", progress=False, log=quiet,
                    should_stop=lambda: next(polls) >= 3)  # stops before step 4: checkpoint at 3
        shutil.copytree(root + "/dp", root + "/single")
        on_dp = train(load("train.mesh.data=2", "train.mesh.fsdp=4"), root + "/dp", progress=False, log=quiet)
        on_one = train(load(), root + "/single", progress=False, log=quiet)
        print(json.dumps({{"cut": cut, "dp": on_dp.get("mesh"), "one": on_one.get("mesh"),
                          "evals": [s["final_eval_loss"] for s in (full, on_dp, on_one)]}}))
    """)
    assert result["cut"] == {"status": "incomplete", "steps": 3}
    assert result["dp"] == {"data": 2, "fsdp": 4} and result["one"] is None
    ref = losses(tmp_path / "full")
    for name in ("dp", "single"):
        assert_close(losses(tmp_path / name), ref)
        assert sorted(int(p.name) for p in (tmp_path / name / "checkpoints").iterdir() if p.name.isdigit()) \
            == [3, 5, 6]
    assert checkpoint_specs(tmp_path / "dp" / "checkpoints" / "3")["qkv"] == (None, "fsdp")  # saved on fsdp 8
    assert result["evals"][1:] == pytest.approx([result["evals"][0]] * 2, rel=RTOL)


# --- two processes ---------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(env: dict, out, sets: list[str]) -> list[subprocess.Popen]:
    """`testbed train` as 2 processes x 4 fake CPU devices, coordinated like a 2-node job (JAX_COORDINATOR_*)."""
    port = _free_port()
    args = [x for kv in [*sets, "train.mesh.data=2", "train.mesh.fsdp=4"] for x in ("--set", kv)]
    procs = []
    for pid in range(2):
        penv = {**env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(pid), "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
        procs.append(subprocess.Popen([sys.executable, "-m", "testbed.launch.cli", "train", str(TINY), "--out",
                                       str(out), *args, "--no-progress"], env=penv, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs: list[subprocess.Popen]) -> list[int]:
    codes = []
    for p in procs:
        try:
            p.wait(timeout=240)
        finally:
            if p.poll() is None:
                p.kill()
        codes.append(p.returncode)
    return codes


def test_two_processes_match_one_device_and_stop_together(jax_env, tmp_path):
    """Multi-host over 2 processes: the curve matches one device; SIGTERM to ONE process stops BOTH at the same
    step (they vote), with a checkpoint there and exit code REQUEUE_EXIT; the resumed pair finishes the curve."""
    sets = [*FAST, "train.steps=24", "train.eval_every=12", "train.checkpoint_every=100"]
    ref = run_on_devices(jax_env, f"""
        import json
        from testbed import config as C
        from testbed.train import train
        train(C.load({str(TINY)!r}, {sets!r}), {str(tmp_path / "ref")!r}, progress=False, log=lambda _: None)
        print("{{}}")
    """, devices=1)
    assert ref == {}
    out = tmp_path / "pair"
    procs = _start_pair(jax_env, out, sets)
    deadline = time.time() + 240
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 6:
            procs[1].send_signal(signal.SIGTERM)  # only the second process hears it
            break
        time.sleep(0.05)
    codes = _wait(procs)
    logs = [p.stdout.read() for p in procs]
    assert codes == [REQUEUE_EXIT, REQUEUE_EXIT], logs
    assert not (out / "summary.json").exists()
    n = len(losses(out))
    assert 6 <= n < 24
    assert [int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()] == [n]
    codes = _wait(_start_pair(jax_env, out, [*sets, "train.trackers=[jsonl, tensorboard]"]))  # not the run's id
    assert codes == [0, 0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2 and summary["devices"] == 8
    assert_close(losses(out), losses(tmp_path / "ref"))
    # the tracker is written by process 0 alone, rebuilt from metrics.jsonl on the resume: one event file, every row
    from .test_trackers import jsonl_scalars, read_events

    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert set(read_events(out / "tensorboard")[0]) == set(jsonl_scalars(out))


def test_each_device_reads_only_its_rows_of_the_batch(jax_env):
    """On a mesh the batch is a lazy view: every device's slice is read by itself (on several hosts, each process
    reads only its shard), and the assembled global batch is the one train_batch gives."""
    out = run_on_devices(jax_env, f"""
        import json, numpy as np
        from testbed import config as C, sharding
        from testbed.data import make_source
        from testbed.data.base import LazyBatch
        cfg = C.load({str(TINY)!r}, {FAST!r} + ["train.mesh.data=-1"])
        place = sharding.placement(cfg)
        src = make_source(cfg.data, cfg.model.vocab_size, cfg.seed)
        calls, read = [], src.train_rows
        src.train_rows = lambda step, b, rows: (calls.append(list(map(int, rows))), read(step, b, rows))[1]
        shape = (1, 8, cfg.data.seq_len + 1)
        arr = place.batch(LazyBatch(src, 5, 8, shape), axis=1)
        eager = src.train_batch(5, 8).reshape(shape)
        print(json.dumps({{"equal": bool(np.array_equal(np.asarray(arr), eager)), "calls": sorted(calls)}}))
    """)
    assert out["equal"] and out["calls"] == [[i] for i in range(8)]
