from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testbed import config as C
from testbed import shapes
from testbed.model import Transformer, init_params, param_info

SHAPES = {
    "d128_l2": ["model.d_model=128", "model.n_layers=2", "model.n_heads=4"],
    "d256_l4_t256": ["model.d_model=256", "model.n_layers=4", "model.n_heads=4", "data.seq_len=256"],
    "d192_swiglu_learned_tied": ["model.d_model=192", "model.n_layers=3", "model.n_heads=3", "model.mlp=swiglu",
                                 "model.pos=learned", "model.tie_embeddings=true"],
}
VARIANTS = [
    [],
    ["model.mlp=swiglu", "model.qk_norm=true"],
    ["model.pos=learned", "model.tie_embeddings=true", "model.norm=layernorm"],
    ["model.use_bias=true", "model.norm=layernorm", "model.head_dim=24", "model.d_ff=100"],
]


def cfg_of(overrides):
    return C.load(None, ["train.steps=10", "model.d_model=64", "model.n_heads=2", "data.seq_len=32",
                         *overrides])


def n_params(p):
    return sum(int(x.size) for x in jax.tree.leaves(p))


@pytest.mark.parametrize("variant", VARIANTS)
def test_param_count_matches_accounting(variant):
    cfg = cfg_of(variant)
    p = init_params(cfg, jax.random.key(0))
    acc = shapes.count(cfg)
    assert n_params(p) == acc.params_total
    emb = int(p["embed"]["embedding"].size) + (int(p["pos_embed"].size) if "pos_embed" in p else 0)
    assert acc.params_embedding == emb
    assert acc.params_nonembedding == acc.params_total - emb
    assert acc.flops_per_token_6n == 6 * acc.params_nonembedding


@pytest.mark.parametrize("name", list(SHAPES))
def test_exact_flops_match_xla_cost_analysis(name):
    cfg = C.load(None, ["train.steps=10", *SHAPES[name]])
    p = init_params(cfg, jax.random.key(0))
    B, T = 2, cfg.data.seq_len
    fwd = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))
    cost = fwd.lower(p, jnp.zeros((B, T), jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ours = B * T * shapes.count(cfg).forward_flops_per_token
    assert abs(cost["flops"] / ours - 1) < 0.10, (cost["flops"], ours)


def test_roles_and_fan_ins():
    cfg = cfg_of(["model.qk_norm=true", "model.mlp=swiglu"])
    p = init_params(cfg, jax.random.key(0))
    info = param_info(p)
    roles, fans = jax.tree.map(lambda i: i.role, info), jax.tree.map(lambda i: i.fan_in, info)
    assert roles["embed"]["embedding"] == "embedding"
    assert roles["readout"]["kernel"] == "readout" and fans["readout"]["kernel"] == 64
    b = roles["block_0"]
    assert b["attn"]["qkv"]["kernel"] == b["mlp"]["down"]["kernel"] == "hidden"
    assert fans["block_0"]["mlp"]["down"]["kernel"] == 256 and fans["block_0"]["attn"]["qkv"]["kernel"] == 64
    assert b["attn"]["q_norm"]["RMSNorm_0"]["scale"] == "vector"
    assert roles["final_norm"]["RMSNorm_0"]["scale"] == "vector"
    assert set(jax.tree.leaves(roles)) == {"embedding", "hidden", "vector", "readout"}


def test_init_stds_follow_config():
    cfg = cfg_of(["model.d_model=256", "model.n_heads=4", "model.init_std=0.05", "model.emb_std=0.5",
                  "model.zero_init_readout=true"])
    p = init_params(cfg, jax.random.key(0))
    assert np.std(np.asarray(p["embed"]["embedding"])) == pytest.approx(0.5, rel=0.05)
    assert np.std(np.asarray(p["block_0"]["mlp"]["up"]["kernel"])) == pytest.approx(0.05, rel=0.05)
    assert not np.any(np.asarray(p["readout"]["kernel"]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal(variant):
    """Changing future tokens never changes earlier logits."""
    cfg = cfg_of(variant)
    p = init_params(cfg, jax.random.key(1))
    t = np.random.default_rng(0).integers(0, 256, (2, 32)).astype(np.int32)
    t2 = t.copy()
    t2[:, 20:] = (t2[:, 20:] + 7) % 256
    f = jax.jit(lambda t: Transformer(cfg).apply({"params": p}, t))
    a, b = np.asarray(f(t)), np.asarray(f(t2))
    assert a.shape == (2, 32, 256) and a.dtype == np.float32
    np.testing.assert_allclose(a[:, :20], b[:, :20], atol=1e-5)
    assert np.abs(a[:, 20:] - b[:, 20:]).max() > 1e-3


def test_bf16_compute_keeps_f32_master_weights_and_close_logits():
    cfg = cfg_of([])
    cfg_bf = cfg_of(["train.compute_dtype=bfloat16"])
    p = init_params(cfg_bf, jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
    t = np.random.default_rng(0).integers(0, 256, (2, 32)).astype(np.int32)
    a = Transformer(cfg).apply({"params": p}, t)
    b = Transformer(cfg_bf).apply({"params": p}, t)
    assert b.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(a - b))) < 0.05 * float(jnp.max(jnp.abs(a))) + 1e-2


def test_ladder_consistent_shapes():
    rungs = [shapes.ladder(w, aspect_ratio=32) for w in (64, 128, 256, 512)]
    assert [r["n_layers"] for r in rungs] == [2, 4, 8, 16]
    assert [r["n_heads"] for r in rungs] == [1, 2, 4, 8]
    assert all(r["head_dim"] == 64 and r["d_ff"] == 4 * r["d_model"] for r in rungs)
    fixed = shapes.ladder(96, depth=3, head_dim=32)
    assert fixed == {"d_model": 96, "n_layers": 3, "n_heads": 3, "head_dim": 32, "d_ff": 384}
    cfg = C.load(None, ["train.steps=1", *[f"model.{k}={v}" for k, v in rungs[1].items()]])
    assert shapes.count(cfg).params_total > 0


@pytest.mark.parametrize("L, block", [(256, 128), (256, 64), (96, 32), (100, 64)])
def test_blocked_causal_attention_equals_full_masked_softmax(L, block):
    from testbed.model import causal_attention

    with jax.default_matmul_precision("highest"):  # GPUs default to TF32 for f32 matmuls
        _check_blocked_attention(causal_attention, L, block)


def _check_blocked_attention(causal_attention, L, block):
    q, k, v = (jax.random.normal(jax.random.key(i), (2, L, 3, 8)) for i in range(3))
    logits = jnp.einsum("bqhk,bthk->bhqt", q, k)
    logits = jnp.where(np.tril(np.ones((L, L), bool)), logits, -jnp.inf)
    ref = jnp.einsum("bhqt,bthk->bqhk", jax.nn.softmax(logits, -1), v)
    np.testing.assert_allclose(causal_attention(q, k, v, block), ref, rtol=1e-5, atol=1e-6)
    def reference(q, k, v):
        masked = jnp.where(np.tril(np.ones((L, L), bool)), jnp.einsum("bqhk,bthk->bhqt", q, k), -jnp.inf)
        return jnp.einsum("bhqt,bthk->bqhk", jax.nn.softmax(masked, -1), v)

    grads = jax.grad(lambda *qkv: jnp.sum(causal_attention(*qkv, block) ** 2), argnums=(0, 1, 2))(q, k, v)
    grads_ref = jax.grad(lambda *qkv: jnp.sum(reference(*qkv) ** 2), argnums=(0, 1, 2))(q, k, v)
    for g, g_ref in zip(grads, grads_ref, strict=True):  # the max shift is stop-gradient: exact for q, k and v
        np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-5)  # f32 sums in another order
