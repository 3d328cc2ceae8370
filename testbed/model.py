"""A compact decoder-only, pre-norm transformer (Flax linen), parameterized by width and depth.

Every parameter's init and forward multiplier come from testbed.parametrization via its ParamInfo (role, fan-in,
inside a block); `param_info` gives that tree for any params tree, and the optimizer reads the same tree. Shapes
in names: B batch, L sequence, D d_model, H heads, K head dim, F d_ff, V vocab.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from testbed import parametrization
from testbed.config import Config, ConfigError, to_dict
from testbed.kernels import dense_dot_general
from testbed.parametrization import ParamInfo


def _normal(std: float):
    return nn.initializers.zeros_init() if std == 0 else nn.initializers.normal(std)


def _zero_first_columns(init, n: int):
    """`init` with the first n output columns zeroed (a zero-init query inside the fused QKV kernel)."""
    return lambda key, shape, dtype=jnp.float32: init(key, shape, dtype).at[:, :n].set(0)


def _dense(cfg: Config, features: int, fan_in: int, name: str, role: str = "hidden",
           zero_cols: int = 0) -> nn.Dense:
    """A bias-free (by default) Dense whose init std comes from the parametrization table."""
    scale = parametrization.role_scale(cfg, ParamInfo(role, fan_in, in_block=role == "hidden"))
    init = _normal(scale.init_std)
    if zero_cols:
        init = _zero_first_columns(init, zero_cols)
    return nn.Dense(features, use_bias=cfg.model.use_bias, kernel_init=init, dtype=compute_dtype(cfg),
                    param_dtype=jnp.float32, dot_general=dense_dot_general, name=name)


def record(module: nn.Module, name: str, x) -> None:
    """Sows mean |x| into 'intermediates' for the coordinate check; free (not even traced) in training."""
    if module.is_mutable_collection("intermediates"):
        module.sow("intermediates", name, jnp.mean(jnp.abs(x.astype(jnp.float32))))


def compute_dtype(cfg: Config):
    return jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32


class Norm(nn.Module):
    """RMSNorm or LayerNorm, computed in float32 whatever the compute dtype."""

    cfg: Config

    @nn.compact
    def __call__(self, x):
        mc = self.cfg.model
        kw = dict(epsilon=mc.norm_eps, dtype=jnp.float32, param_dtype=jnp.float32)
        if mc.norm == "rmsnorm":
            y = nn.RMSNorm(**kw)(x)
        else:
            y = nn.LayerNorm(use_bias=mc.use_bias, **kw)(x)
        return y.astype(x.dtype)


def rope(x_BxLxHxK, base: float):
    """Rotary position embedding (rotate-half form) applied to queries or keys."""
    L, K = x_BxLxHxK.shape[1], x_BxLxHxK.shape[3]
    inv_freq_K2 = 1.0 / (base ** (np.arange(0, K, 2, dtype=np.float32) / K))
    ang_LxK2 = np.arange(L, dtype=np.float32)[:, None] * inv_freq_K2[None, :]
    sin_Lx1xK = np.concatenate([np.sin(ang_LxK2)] * 2, -1)[:, None, :]
    cos_Lx1xK = np.concatenate([np.cos(ang_LxK2)] * 2, -1)[:, None, :]
    x1, x2 = jnp.split(x_BxLxHxK, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x_BxLxHxK * cos_Lx1xK + rotated * sin_Lx1xK).astype(x_BxLxHxK.dtype)


def causal_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, block: int = 64):
    """Causal softmax attention (q pre-scaled), float32 logits, skipping key blocks above the diagonal.

    Query block i attends only to keys [0, (i + 1) * block): with L = 256 and 64-token blocks that computes 5/8
    of the L x L scores. Written for XLA:CPU, where it beats jax.nn.dot_product_attention (which the GPU and
    TPU paths use): heads-first operands (no transposes inside the batched matmuls), one additive causal bias
    per block, and the softmax's normalisation applied to the [C, K] output rather than the [C, S] weights
    (one pass over the scores fewer, forward and backward; +8% tokens/s at the reference shape). The max
    shift is a constant to autodiff (it cancels exactly). FLOP accounting (shapes.py) still counts the full
    L x L, the usual convention.
    """
    L = q_BxLxHxK.shape[1]
    n = L // block if L % block == 0 and L >= 2 * block else 1
    c = L // n
    q_BxHxLxK, k_BxHxLxK, v_BxHxLxK = (jnp.swapaxes(x, 1, 2) for x in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
    outs = []
    for i in range(n):
        s = (i + 1) * c  # keys this query block sees
        rows_Cx1, keys_1xS = np.arange(i * c, s)[:, None], np.arange(s)[None, :]
        causal_bias_CxS = jnp.asarray(np.where(keys_1xS <= rows_Cx1, 0.0, -1e30), jnp.float32)
        logits_BxHxCxS = jnp.einsum("bhqk,bhtk->bhqt", q_BxHxLxK[:, :, i * c:s], k_BxHxLxK[:, :, :s]) + causal_bias_CxS
        shift_BxHxCx1 = jax.lax.stop_gradient(jnp.max(logits_BxHxCxS, axis=-1, keepdims=True))
        weights_BxHxCxS = jnp.exp(logits_BxHxCxS - shift_BxHxCx1)  # every row keeps its diagonal: a sum >= 1
        norm_BxHxCx1 = 1.0 / jnp.sum(weights_BxHxCxS, axis=-1, keepdims=True)
        outs.append(jnp.einsum("bhqt,bhtk->bhqk", weights_BxHxCxS, v_BxHxLxK[:, :, :s]) * norm_BxHxCx1)
    out_BxHxLxK = outs[0] if n == 1 else jnp.concatenate(outs, axis=2)
    return jnp.swapaxes(out_BxHxLxK, 1, 2)


def attention_impl(cfg: Config) -> str:
    """train.attention resolved: blocked einsums on CPU (faster there), jax.nn.dot_product_attention elsewhere,
    cuDNN's flash attention for bfloat16 on GPU (it takes only 16-bit inputs; O(L) memory instead of O(L^2))."""
    impl = cfg.train.attention
    if impl != "auto":
        return impl
    backend = jax.default_backend()
    if backend == "cpu":
        return "einsum"
    return "cudnn" if backend == "gpu" and cfg.train.compute_dtype == "bfloat16" else "xla"


def fused_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, scale: float, impl: str, strict: bool = False):
    """Causal attention through jax.nn.dot_product_attention (float32 logits whatever the input dtype). cuDNN
    refusing the shape or dtype falls back to XLA's version (the same math), unless `strict` (asked for by name)."""
    kw = dict(scale=scale, is_causal=True)
    if impl == "cudnn":
        try:
            return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, implementation="cudnn", **kw)
        except Exception as e:
            if strict:
                raise ConfigError(f"train.attention: cudnn cannot run here ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}); use auto or xla") from None
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, implementation="xla", **kw)


class Attention(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BxLxD):
        mc = self.cfg.model
        B, L, D = x_BxLxD.shape
        H, K = mc.n_heads, mc.resolved_head_dim
        qkv_BxLx3HK = _dense(self.cfg, 3 * H * K, D, "qkv", zero_cols=H * K if mc.zero_init_query else 0)(x_BxLxD)
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = jnp.split(qkv_BxLx3HK.reshape(B, L, 3 * H, K), 3, axis=2)
        if mc.qk_norm:
            q_BxLxHxK = Norm(self.cfg, name="q_norm")(q_BxLxHxK)
            k_BxLxHxK = Norm(self.cfg, name="k_norm")(k_BxLxHxK)
        if mc.pos == "rope":
            q_BxLxHxK = rope(q_BxLxHxK, mc.rope_base)
            k_BxLxHxK = rope(k_BxLxHxK, mc.rope_base)
        f32, scale, impl = jnp.float32, parametrization.attn_scale(self.cfg), attention_impl(self.cfg)
        if self.is_mutable_collection("intermediates"):  # the coordinate check's attention logits
            logits_BxHxLxL = jnp.einsum("bqhk,bthk->bhqt", q_BxLxHxK.astype(f32) * scale, k_BxLxHxK.astype(f32))
            causal_LxL = np.tril(np.ones((L, L), bool))
            record(self, "attn_logits", logits_BxHxLxL[..., causal_LxL])
        if impl == "einsum":
            out_BxLxHxK = causal_attention(q_BxLxHxK.astype(f32) * scale, k_BxLxHxK.astype(f32),
                                           v_BxLxHxK.astype(f32))
        else:
            out_BxLxHxK = fused_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, scale, impl,
                                          strict=self.cfg.train.attention == "cudnn")
        out_BxLxHxK = out_BxLxHxK.astype(x_BxLxD.dtype)
        return _dense(self.cfg, D, H * K, "out")(out_BxLxHxK.reshape(B, L, H * K))


class Mlp(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BxLxD):
        mc = self.cfg.model
        D, F = mc.d_model, mc.resolved_d_ff
        if mc.mlp == "swiglu":
            gate_BxLxF = _dense(self.cfg, F, D, "gate")(x_BxLxD)
            h_BxLxF = nn.silu(gate_BxLxF) * _dense(self.cfg, F, D, "up")(x_BxLxD)
        else:
            h_BxLxF = nn.gelu(_dense(self.cfg, F, D, "up")(x_BxLxD))
        return _dense(self.cfg, D, F, "down")(h_BxLxF)


class Block(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BxLxD):
        r = parametrization.residual_mult(self.cfg)
        attn_BxLxD = Attention(self.cfg, name="attn")(Norm(self.cfg, name="attn_norm")(x_BxLxD))
        record(self, "attn_out", attn_BxLxD)
        x_BxLxD = x_BxLxD + r * attn_BxLxD
        mlp_BxLxD = Mlp(self.cfg, name="mlp")(Norm(self.cfg, name="mlp_norm")(x_BxLxD))
        record(self, "mlp_out", mlp_BxLxD)
        x_BxLxD = x_BxLxD + r * mlp_BxLxD
        record(self, "residual", x_BxLxD)
        return x_BxLxD


class Transformer(nn.Module):
    """Token ids [B, L] -> float32 logits [B, L, V]."""

    cfg: Config

    @nn.compact
    def __call__(self, tokens_BxL):
        cfg, mc = self.cfg, self.cfg.model
        dt = compute_dtype(cfg)
        emb = parametrization.role_scale(cfg, ParamInfo("embedding"))
        embed = nn.Embed(mc.vocab_size, mc.d_model, embedding_init=_normal(emb.init_std), dtype=dt,
                         param_dtype=jnp.float32, name="embed")
        x_BxLxD = embed(tokens_BxL)
        if mc.pos == "learned":
            pos_LxD = self.param("pos_embed", _normal(emb.init_std), (cfg.data.seq_len, mc.d_model))
            x_BxLxD = x_BxLxD + pos_LxD[None, : tokens_BxL.shape[1]].astype(dt)
        x_BxLxD = x_BxLxD * emb.forward_mult
        record(self, "embedding", x_BxLxD)
        for i in range(mc.n_layers):
            x_BxLxD = Block(cfg, name=f"block_{i}")(x_BxLxD)
        x_BxLxD = Norm(cfg, name="final_norm")(x_BxLxD)
        if mc.tie_embeddings:
            logits_BxLxV = embed.attend(x_BxLxD * parametrization.role_scale(cfg, ParamInfo("readout")).forward_mult)
        else:
            readout = parametrization.role_scale(cfg, ParamInfo("readout", mc.d_model))
            logits_BxLxV = _dense(cfg, mc.vocab_size, mc.d_model, "readout", "readout")(x_BxLxD)
            logits_BxLxV = logits_BxLxV * readout.forward_mult
        record(self, "logits", logits_BxLxV)
        return logits_BxLxV.astype(jnp.float32)


def role_of(path: tuple[str, ...]) -> str:
    """The role of the parameter at `path` (a tuple of dict keys), from its module name."""
    if path[0] in ("embed", "pos_embed"):
        return "embedding"
    if path[0] == "readout":
        return "readout" if path[-1] == "kernel" else "vector"
    return "hidden" if path[-1] == "kernel" else "vector"


def param_info(params) -> dict:
    """A tree like `params` holding each leaf's ParamInfo: role, fan-in (kernel.shape[0] for matrices, else 1)
    and whether it sits inside a residual block (depth rules scale those)."""
    def info(path, leaf) -> ParamInfo:
        keys = tuple(k.key for k in path)
        role = role_of(keys)
        fan_in = int(leaf.shape[0]) if role in ("hidden", "readout") else 1
        return ParamInfo(role, fan_in, str(keys[0]).startswith("block_"))

    return jax.tree_util.tree_map_with_path(info, params)


_COMPILED_INITS: dict[str, Callable] = {}


def init_params(cfg: Config, rng: jax.Array):
    """float32 master parameters for `cfg`, drawn by one compiled program: op by op, the initialisers and the
    init forward pass compiled one at a time (~3 s of every run's start on CPU, ~0.5 s jitted)."""
    key = json.dumps({k: v for k, v in to_dict(cfg).items() if k != "seed"}, sort_keys=True)  # the seed is `rng`
    if key not in _COMPILED_INITS:
        if len(_COMPILED_INITS) >= 64:  # a long sweep in one process: keep the memory bounded
            _COMPILED_INITS.clear()
        tokens_1xL = jnp.zeros((1, cfg.data.seq_len), jnp.int32)
        _COMPILED_INITS[key] = jax.jit(lambda r: Transformer(cfg).init(r, tokens_1xL)["params"])
    return _COMPILED_INITS[key](rng)
