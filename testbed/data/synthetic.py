"""Synthetic default data: a Zipf-weighted mixture of sparse Markov "skills" with an exactly known entropy.

Why not one Markov chain: a small model learns its whole table and every model size lands on the floor.
Here (the quantization model of neural scaling) each sequence is written by one latent skill k drawn with
probability p_k ∝ (k+1)^-a, k < K. Skill k is a sparse order-o Markov chain over the alphabet V: after the
context c (the previous o tokens) its successors are s_j(k, c) = H(seed, k, c, j) mod V, j < b, taken with
fixed probabilities q_j ∝ 2^-j (a dominant successor plus a geometric tail, so each skill is nearly, not
fully, deterministic: H(q) = 1.14 nats at b=4 against log V = 5.55). Collisions among successors just add
their q_j. Nothing is tabulated: H is a splitmix64 finalizer over uint64 arrays, so K can be huge.

A model that has learned the top-n skills and knows nothing of the rest pays ~log V - H(q) extra nats per
token on a tail sequence, so its reducible loss is ∝ tail mass sum_{k>=n} p_k ≈ c (n^(1-a) - K^(1-a)):
a power law in n with exponent a - 1 (0.3 at a = 1.3). `oracle_loss` computes exactly that predictor.
Caveat for fits: the finite K makes a fit of E + A n^-alpha recover E = entropy - c K^(1-a), below the
true floor (~0.3 nats at K = 4096); the capacity-limited regime never sees the missing skills beyond K.
The Bayes predictor identifies the skill in ~2 transitions (a wrong skill survives one with chance ~b/V);
a model can also copy in-context bigrams for skills it has not learned, which recovers only ~0.5 of the
~4.4 nats/token gap at V = 256, L = 128 (contexts rarely repeat), so the tail stays capacity-bound.

Exact scoring: log p(x_t | x_<t) = log sum_k P(k | x_<t) p(x_t | ctx_t, k), the first o tokens being
uniform. The posterior is kept in log space per (sequence, skill) pair; a skill that assigns a target
probability 0 has posterior exactly 0 from then on, so it is dropped. Positions are processed in chunks of
doubling length and the pair set pruned between chunks, which is exact (not a beam) and makes the cost
~B * K * (a few positions) instead of B * K * L: wrong skills survive a transition with chance ~b/V.

Determinism: the training batch of `step` is drawn from default_rng([seed, 1, step]) and the eval set from
default_rng([seed, 2]): distinct SeedSequence entropies, so the eval set never coincides with a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from testbed.config import DataConfig
from testbed.data.base import EvalSet, Source

_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finalizer multipliers
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_CTX = np.uint64(0xD6E8FEB86659FD93)  # odd multipliers spreading the context id and successor slot
_SLOT = np.uint64(0xCA5A826395121157)
_MAX_PAIR_STEPS = 1 << 19  # (sequence, skill) pairs x positions scored at once: bounds memory (tens of MB)


def _fmix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place on a fresh uint64 array: a bijection with full avalanche."""
    t = np.empty_like(x)
    np.right_shift(x, np.uint64(30), out=t)
    x ^= t
    x *= _M1
    np.right_shift(x, np.uint64(27), out=t)
    x ^= t
    x *= _M2
    np.right_shift(x, np.uint64(31), out=t)
    x ^= t
    return x


def _segment_logsumexp(a_PxC: np.ndarray, starts_G: np.ndarray) -> np.ndarray:
    """logsumexp over consecutive row segments (one per sequence); all -inf segments give -inf."""
    m_GxC = np.maximum.reduceat(a_PxC, starts_G, axis=0)
    m_GxC = np.where(np.isfinite(m_GxC), m_GxC, 0.0)
    seg_P = np.repeat(np.arange(len(starts_G)), np.diff(np.append(starts_G, len(a_PxC))))
    with np.errstate(divide="ignore"):
        return np.log(np.add.reduceat(np.exp(a_PxC - m_GxC[seg_P]), starts_G, axis=0)) + m_GxC


EVAL_STRATUM = 4  # eval sequences per equal-mass stratum of the skill prior (>= 2: a within-stratum variance)
ENTROPY_SEQUENCES = 512  # eval sequences the exact entropy is computed on


@dataclass
class SkillMixture(Source):
    """Zipf mixture of hashed sparse Markov skills: power-law capacity curve, exactly computable floor."""

    n_skills: int = 4096
    zipf_exponent: float = 1.3
    branching: int = 4
    order: int = 1
    seed: int = 0
    eval_sequences: int = 64
    _eval: EvalSet | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not 1 <= self.order <= 3:
            raise ValueError(f"SkillMixture: order must be 1, 2 or 3, got {self.order}")
        for name in ("vocab_size", "seq_len", "n_skills", "branching", "eval_sequences"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SkillMixture: {name} must be positive, got {getattr(self, name)}")
        if self.vocab_size ** self.order >= 2**63:
            raise ValueError(f"SkillMixture: vocab_size**order = {self.vocab_size}**{self.order} overflows")
        k_K = np.arange(self.n_skills, dtype=np.float64)
        logw_K = -self.zipf_exponent * np.log1p(k_K)
        self.logprior_K = logw_K - np.log(np.exp(logw_K - logw_K.max()).sum()) - logw_K.max()
        self.prior_K = np.exp(self.logprior_K)
        self.cumprior_K = np.cumsum(self.prior_K)
        q_b = 0.5 ** np.arange(self.branching, dtype=np.float64)
        self.q_b = q_b / q_b.sum()
        self.cumq_b = np.cumsum(self.q_b)
        seed_key = _fmix(np.array([self.seed % 2**64], dtype=np.uint64) ^ np.uint64(0x5EED5EED5EED5EED))
        self.key_K = _fmix(seed_key + (np.arange(1, self.n_skills + 1, dtype=np.uint64) * _GOLDEN))
        self.slot_b = np.arange(self.branching, dtype=np.uint64) * _SLOT
        self.meta = {
            "source": "synthetic", "generator": "skill_mixture", "n_skills": self.n_skills,
            "zipf_exponent": self.zipf_exponent, "branching": self.branching, "order": self.order,
            "successor_probs": self.q_b.tolist(),
            "skill_entropy": float(-(self.q_b * np.log(self.q_b)).sum()),  # H(q): the floor once k is known
            "capacity_exponent": self.zipf_exponent - 1.0, "seed": self.seed,
        }

    @classmethod
    def from_config(cls, cfg: DataConfig, vocab_size: int, seed: int) -> SkillMixture:
        return cls(vocab_size=vocab_size, seq_len=cfg.seq_len, n_skills=cfg.n_skills,
                   zipf_exponent=cfg.zipf_exponent, branching=cfg.branching, order=cfg.skill_order, seed=seed,
                   eval_sequences=cfg.eval_sequences)

    # ------------------------------------------------------------------------------------------ hashing

    def _successors(self, key_P: np.ndarray, ctx_PxS: np.ndarray) -> np.ndarray:
        """Successor tokens s_j(k, c), int64 [P, S, b]; the sampler's hash path inlines this definition."""
        h_PxSxb = (key_P[:, None] + self.slot_b)[:, None, :] + ctx_PxS[..., None] * _CTX
        return (_fmix(h_PxSxb) % np.uint64(self.vocab_size)).astype(np.int64)

    def _contexts(self, tokens_BxT: np.ndarray) -> np.ndarray:
        """Context ids sum_i x_{t-1-i} V^i (uint64 [B, T - o]) for the walk targets t = o..T-1."""
        T, o = tokens_BxT.shape[1], self.order
        x_BxT = tokens_BxT.astype(np.uint64)
        ctx_BxS = np.zeros((tokens_BxT.shape[0], T - o), dtype=np.uint64)
        for i in range(o):
            ctx_BxS += x_BxT[:, o - 1 - i:T - 1 - i] * np.uint64(self.vocab_size ** i)
        return ctx_BxS

    # ---------------------------------------------------------------------------------------- sampling

    def sample(self, rng: np.random.Generator, batch_size: int, *, table: bool | None = None,
               skill_u_B: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draws int32 [B, seq_len + 1] tokens and their int64 [B] skill ids; `table` forces a code path;
        `skill_u_B` (uniforms in [0, 1)) picks the skills through the prior's CDF instead of fresh draws."""
        B, V, o, Tp1 = batch_size, self.vocab_size, self.order, self.seq_len + 1
        u_B = rng.random(B) if skill_u_B is None else np.asarray(skill_u_B, np.float64)
        k_B = np.minimum(np.searchsorted(self.cumprior_K, u_B * self.cumprior_K[-1], side="right"),
                         self.n_skills - 1)
        tokens_BxT = np.empty((B, Tp1), dtype=np.int64)
        tokens_BxT[:, :o] = rng.integers(0, V, (B, min(o, Tp1)))
        S = max(Tp1 - o, 0)
        j_SxB = np.minimum(np.searchsorted(self.cumq_b, rng.random((S, B)) * self.cumq_b[-1], side="right"),
                           self.branching - 1)
        n_ctx = V ** o
        if table is None:  # tabulating every context of the batch's skills is cheaper than L small hashes
            table = B * n_ctx * self.branching <= 2000 * max(S, 1)
        keep = n_ctx // V  # the context id modulo V**(o-1): drops the oldest token before appending
        ctx_B = sum(tokens_BxT[:, o - 1 - i] * V**i for i in range(o)) if S else np.zeros(B, np.int64)
        key_B = self.key_K[k_B]
        if table:
            all_ctx_BxC = np.broadcast_to(np.arange(n_ctx, dtype=np.uint64), (B, n_ctx))
            flat = self._successors(key_B, all_ctx_BxC).reshape(-1)  # [B * n_ctx * b]
            off_SxB = np.arange(B, dtype=np.int64) * (n_ctx * self.branching) + j_SxB
            for s in range(S):  # per position: a handful of numpy calls on [B] arrays
                x_B = flat.take(ctx_B * self.branching + off_SxB[s])
                tokens_BxT[:, o + s] = x_B
                ctx_B = x_B if o == 1 else (ctx_B % keep) * V + x_B
        else:
            base_SxB = key_B + self.slot_b[j_SxB]
            ctx_B, h_B, t_B = ctx_B.astype(np.uint64), np.empty(B, np.uint64), np.empty(B, np.uint64)
            V_u, keep_u = np.uint64(V), np.uint64(keep)
            for s in range(S):  # the same arithmetic as _successors, in place on preallocated buffers
                np.multiply(ctx_B, _CTX, out=h_B)
                h_B += base_SxB[s]
                for shift, mult in ((30, _M1), (27, _M2), (31, None)):
                    np.right_shift(h_B, np.uint64(shift), out=t_B)
                    h_B ^= t_B
                    if mult is not None:
                        h_B *= mult
                np.remainder(h_B, V_u, out=h_B)
                tokens_BxT[:, o + s] = h_B
                ctx_B %= keep_u
                ctx_B *= V_u
                ctx_B += h_B
        return tokens_BxT.astype(np.int32), k_B

    def train_batch(self, step: int, batch_size: int) -> np.ndarray:
        """The int32 [batch_size, seq_len + 1] batch for `step`: a pure function of (seed, step)."""
        return self.sample(np.random.default_rng([self.seed, 1, step]), batch_size)[0]

    # ----------------------------------------------------------------------------------------- scoring

    def _mixture_logprobs(self, tokens_BxT: np.ndarray, n_known: int, uniform: bool) -> np.ndarray:
        """log p(x_t | x_<t), float64 [B, T-1], under skills 0..n_known-1 plus (optionally) a uniform tail."""
        tokens_BxT = np.asarray(tokens_BxT, dtype=np.int64)
        if tokens_BxT.ndim != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tokens_BxT.shape}")
        if tokens_BxT.size and (tokens_BxT.min() < 0 or tokens_BxT.max() >= self.vocab_size):
            raise ValueError(f"tokens must lie in [0, {self.vocab_size})")
        B, T = tokens_BxT.shape
        V, o = self.vocab_size, self.order
        logp_BxT = np.full((B, max(T - 1, 0)), -np.log(V))
        S = T - o
        if S <= 0 or B == 0:
            return logp_BxT
        logp_BxT[:, o - 1:] = -np.inf
        ctx_BxS, tgt_BxS = self._contexts(tokens_BxT), tokens_BxT[:, o:]
        tail = float(self.prior_K[n_known:].sum()) if uniform else 0.0
        comp_logprior_C = self.logprior_K[:n_known]
        if tail > 0:  # component id n_known is the uniform "unknown" one
            comp_logprior_C = np.append(comp_logprior_C, np.log(tail))
        n_comp = len(comp_logprior_C)
        group = max(1, _MAX_PAIR_STEPS // (2 * n_comp))
        for g0 in range(0, B, group):
            seq_P = np.repeat(np.arange(g0, min(B, g0 + group)), n_comp)
            comp_P = np.tile(np.arange(n_comp), len(seq_P) // n_comp)
            logjoint_P = comp_logprior_C[comp_P]
            s0, width = 0, 1
            while s0 < S and len(seq_P):
                s1 = min(S, s0 + max(1, min(width, _MAX_PAIR_STEPS // len(seq_P))))
                known_P = comp_P < n_known
                lp_PxC = np.full((len(seq_P), s1 - s0), -np.log(V))
                succ = self._successors(self.key_K[comp_P[known_P]], ctx_BxS[seq_P[known_P], s0:s1])
                hit = succ == tgt_BxS[seq_P[known_P], s0:s1, None]
                with np.errstate(divide="ignore"):
                    lp_PxC[known_P] = np.log(hit @ self.q_b)
                cum_PxC = logjoint_P[:, None] + np.cumsum(lp_PxC, axis=1)
                prev_PxC = np.concatenate([logjoint_P[:, None], cum_PxC[:, :-1]], axis=1)
                starts = np.flatnonzero(np.r_[True, seq_P[1:] != seq_P[:-1]])
                num, den = _segment_logsumexp(cum_PxC, starts), _segment_logsumexp(prev_PxC, starts)
                with np.errstate(invalid="ignore"):
                    step_BxC = np.where(num > -np.inf, num - den, -np.inf)
                logp_BxT[seq_P[starts], o - 1 + s0:o - 1 + s1] = step_BxC
                logjoint_P = cum_PxC[:, -1]
                alive = logjoint_P > -np.inf  # posterior exactly 0: contributes nothing from here on
                seq_P, comp_P, logjoint_P = seq_P[alive], comp_P[alive], logjoint_P[alive]
                s0, width = s1, 2 * width
        return logp_BxT

    def token_logprobs(self, tokens_BxT: np.ndarray) -> np.ndarray:
        """Exact log p(x_t | x_<t), float64 [B, T-1] for t = 1..T-1: the Bayes-optimal (irreducible) loss."""
        return self._mixture_logprobs(tokens_BxT, self.n_skills, uniform=False)

    def oracle_loss(self, n_known: int, tokens) -> float:
        """Mean loss of a predictor that knows the top-n_known skills exactly and the rest only as noise."""
        n = int(np.clip(n_known, 0, self.n_skills))
        return float(-self._mixture_logprobs(tokens, n, uniform=True).mean())

    def eval_set(self) -> EvalSet:
        """The fixed held-out set, a stratified sample of the skill mixture (below), with its entropy (cached).

        Most of a model's per-sequence loss spread is which skill a sequence came from (known skills ~1 nat, unknown
        ones ~log V), so a plain random set needs ~50x more sequences for the same standard error. Here the prior's
        CDF is cut into G = E // EVAL_STRATUM equal-mass strata, each gets E / G sequences (proportional
        allocation: the mean is unbiased), and sequence i lies in stratum i % G, so any prefix of G sequences is
        one per stratum. On the default source this cuts the eval loss's standard error 7-14x at equal size."""
        if self._eval is None:
            E = self.eval_sequences
            G = max(1, E // EVAL_STRATUM)
            rng = np.random.default_rng([self.seed, 2])
            strata_E = np.arange(E) % G
            u_E = (strata_E + rng.random(E)) / G
            tokens, _ = self.sample(rng, E, skill_u_B=u_E)
            # the exact entropy costs ~3.5 ms per sequence (every skill's posterior): one sequence from each of up
            # to ENTROPY_SEQUENCES strata spread evenly over the CDF (its error is the walks' spread, ~1e-3 nats)
            n_h = min(G, ENTROPY_SEQUENCES)
            entropy = float(-self.token_logprobs(tokens[(np.arange(n_h) * G) // n_h]).mean())
            self._eval = EvalSet(tokens_ExLp1=tokens, entropy=entropy, strata_E=strata_E)
            self.meta["entropy_floor"] = entropy
        return self._eval
