"""Where a run computes: the platform check, what runs record about their devices, `testbed env`, datasheet peaks,
and the accelerator attention path (jax.nn.dot_product_attention) against the CPU's blocked einsums."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from testbed import config, hardware
from testbed.model import Transformer, attention_impl, init_params

from .conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
FAST = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "data.seq_len=32", "train.batch_size=8",
        "data.eval_sequences=8", "train.steps=4", "train.eval_every=4", "train.sigma_every=0", "optim.warmup_steps=0"]


def test_a_missing_platform_is_exit_2_with_the_install_command_and_nothing_written(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", str(TINY), "--set", "train.platform=gpu", "--out", str(out), "--no-progress")
    assert r.returncode == 2, r.stderr[-2000:]
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("testbed train: error:")]
    assert "train.platform: gpu requested" in line and "pip install -e '.[cuda12]'" in line
    assert not out.exists()


def test_a_run_says_and_records_what_it_trained_on(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", str(TINY), *[x for kv in [*FAST, "train.platform=cpu"] for x in ("--set", kv)], "--out",
            str(out), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{out}: training on cpu: 1 device (cpu), 1 process" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert (s["platform"], s["device_kind"], s["device_count"], s["process_count"]) == ("cpu", "cpu", 1, 1)
    # platform and attention are placement: the run id (and so the resume check) ignores them
    a, b = config.load(TINY, FAST), config.load(TINY, [*FAST, "train.platform=cpu", "train.attention=xla"])
    assert config.run_id(a) == config.run_id(b)


def test_env_reports_devices_versions_and_warns_about_an_unused_gpu(cli, tmp_path):
    r = cli("env", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["platform"] == jax.default_backend() and d["device_count"] >= 1 and d["process_count"] == 1
    assert set(d["versions"]) >= {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint"} and d["versions"]["jax"]
    # a machine whose driver lists GPUs that JAX does not use (the CPU-only jaxlib): a warning with the fix
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    r = cli("env", env=env)
    if jax.default_backend() == "cpu":
        assert "WARNING: JAX computes on the CPU, but this machine has 1 NVIDIA GPU(s)" in r.stdout, r.stdout
        assert "pip install -e '.[cuda12]'" in r.stdout


def test_datasheet_peaks_by_device_kind():
    assert hardware.datasheet_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
    assert hardware.datasheet_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12  # the longer prefix wins
    assert hardware.datasheet_peak("NVIDIA A100-SXM4-80GB", "float32") == 156e12  # TF32
    assert hardware.datasheet_peak("TPU v5 lite", "bfloat16") == 197e12
    assert hardware.datasheet_peak("cpu", "float32") is None


@pytest.mark.parametrize("extra", [[], ["model.qk_norm=true", "train.compute_dtype=bfloat16"],
                                   ["param.name=mup", "model.d_model=64", "param.base_width=32"]])
def test_dot_product_attention_path_matches_the_blocked_einsums(extra):
    """The accelerators' attention (jax.nn.dot_product_attention, causal) computes what the CPU path does."""
    cpu = config.load(TINY, extra)
    xla = config.load(TINY, [*extra, "train.attention=xla"])
    assert attention_impl(xla) == "xla" and attention_impl(cpu) == ("einsum" if jax.default_backend() == "cpu"
                                                                    else attention_impl(cpu))
    params = init_params(cpu, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, 256, (2, cpu.data.seq_len)).astype(np.int32)
    a = np.asarray(Transformer(cpu).apply({"params": params}, tokens))
    b = np.asarray(Transformer(xla).apply({"params": params}, tokens))
    tol = 5e-2 if "train.compute_dtype=bfloat16" in extra else 1e-5
    np.testing.assert_allclose(a, b, atol=tol * np.abs(a).max())


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN may be there on a GPU")
def test_cudnn_asked_for_by_name_where_there_is_none_is_a_config_error():
    cfg = config.load(TINY, ["train.attention=cudnn"])
    params = init_params(config.load(TINY), jax.random.key(0))
    with pytest.raises(config.ConfigError, match="train.attention: cudnn cannot run here"):
        Transformer(cfg).apply({"params": params}, np.zeros((1, cfg.data.seq_len), np.int32))
