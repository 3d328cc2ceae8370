"""The model ladder (a whole shape from one width) and exact parameter and FLOP accounting.

Conventions (Porian et al. 2024 show they matter for fitted exponents; record both):
- params_embedding: token and learned-position lookup tables (no matmul FLOPs);
  params_nonembedding: everything else, including an untied readout matrix.
- flops_per_token_6n: 6 * params_nonembedding (Kaplan's C = 6N).
- flops_per_token: 3x the exact forward matmul FLOPs per token (backward = 2x forward): QKV, attention
  scores and values over the full context (as the compiled program computes them), attention out, MLP and the
  output layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.config import Config, ModelConfig


def ladder(width: int, *, aspect_ratio: float | None = 64.0, depth: int | None = None,
           head_dim: int = 64, ffn_ratio: int = 4) -> dict:
    """Model overrides for one rung: d_model = width, depth from a fixed aspect ratio or fixed depth.

    heads = width // head_dim (at least 1), so head size stays fixed as width grows (muP-friendly).
    """
    if depth is None:
        if aspect_ratio is None:
            raise ValueError("ladder: give aspect_ratio (d_model / n_layers) or depth")
        depth = max(1, round(width / aspect_ratio))
    n_heads = max(1, width // head_dim)
    if width % n_heads:
        raise ValueError(f"ladder: width {width} is not divisible into {n_heads} heads of {head_dim}")
    return {"d_model": width, "n_layers": depth, "n_heads": n_heads, "head_dim": width // n_heads,
            "d_ff": ffn_ratio * width}


@dataclass(frozen=True)
class Accounting:
    params_total: int
    params_embedding: int
    params_nonembedding: int
    forward_flops_per_token: int
    flops_per_token: int
    flops_per_token_6n: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _norm_params(m: ModelConfig, width: int) -> int:
    return width * (2 if (m.norm == "layernorm" and m.use_bias) else 1)


def count(cfg: Config) -> Accounting:
    """Exact parameter counts (checked against the initialized tree in tests) and FLOPs per token."""
    m = cfg.model
    D, H, K, F, V, L = m.d_model, m.n_heads, m.resolved_head_dim, m.resolved_d_ff, m.vocab_size, m.n_layers
    T = cfg.data.seq_len
    b = int(m.use_bias)
    n_mlp_in = 2 if m.mlp == "swiglu" else 1
    attn = D * 3 * H * K + b * 3 * H * K + H * K * D + b * D
    mlp = n_mlp_in * (D * F + b * F) + F * D + b * D
    norms = 2 * _norm_params(m, D) + (2 * _norm_params(m, K) if m.qk_norm else 0)
    block = attn + mlp + norms
    embedding = V * D + (T * D if m.pos == "learned" else 0)
    readout = 0 if m.tie_embeddings else V * D + b * V
    nonembedding = L * block + _norm_params(m, D) + readout
    fwd_block = 2 * (D * 3 * H * K + H * K * D + n_mlp_in * D * F + F * D) + 2 * 2 * T * H * K
    forward = L * fwd_block + 2 * D * V
    return Accounting(
        params_total=embedding + nonembedding,
        params_embedding=embedding,
        params_nonembedding=nonembedding,
        forward_flops_per_token=forward,
        flops_per_token=3 * forward,
        flops_per_token_6n=6 * nonembedding,
    )


def memory_estimate_bytes(cfg: Config) -> dict:
    """Rough training memory: f32 params + grads + two Adam moments, plus saved activations of one microbatch."""
    acc = count(cfg)
    m = cfg.model
    B = cfg.train.batch_size // cfg.train.grad_accum
    T, D, F, H, V = cfg.data.seq_len, m.d_model, m.resolved_d_ff, m.n_heads, m.vocab_size
    act_bytes = 2 if cfg.train.compute_dtype == "bfloat16" else 4
    # Per layer: ~8 D-wide tensors (norms, qkv, attn out, residuals), 2-3 F-wide MLP tensors and H*T*T
    # attention probabilities kept for the backward pass; plus logits (f32) at the top.
    per_layer = B * T * (8 * D + 3 * F) * act_bytes + B * H * T * T * 4
    activations = m.n_layers * per_layer + 2 * B * T * V * 4
    state = 4 * acc.params_total * 4
    return {"params_and_optimizer_bytes": state, "activation_bytes": activations,
            "total_bytes": state + activations}
