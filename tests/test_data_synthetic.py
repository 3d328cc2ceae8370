"""Synthetic skill mixture: determinism, exact scoring vs brute force, sampler = scorer, capacity curve."""

from __future__ import annotations

import math

import numpy as np
import pytest

from testbed.config import DataConfig
from testbed.data import make_source
from testbed.data import synthetic as syn
from testbed.data.base import EvalSet
from testbed.data.synthetic import SkillMixture

MASK = 2**64 - 1


# ------------------------------------------------------------------------ independent reference (pure Python)


def mix(x: int) -> int:
    """splitmix64 finalizer on Python ints, written from the spec rather than the vectorized code."""
    x &= MASK
    x ^= x >> 30
    x = (x * int(syn._M1)) & MASK
    x ^= x >> 27
    x = (x * int(syn._M2)) & MASK
    return x ^ (x >> 31)


def successor_tables(V: int, K: int, b: int, order: int, seed: int) -> np.ndarray:
    """p(x | c, k) as a dense [K, V**order, V] table, built one (k, c, j) at a time."""
    seed_key = mix((seed % 2**64) ^ 0x5EED5EED5EED5EED)
    q = [2.0**-j for j in range(b)]
    q = [w / sum(q) for w in q]
    P = np.zeros((K, V**order, V))
    for k in range(K):
        key = mix(seed_key + (k + 1) * int(syn._GOLDEN))
        for c in range(V**order):
            for j in range(b):
                s = mix(key + j * int(syn._SLOT) + c * int(syn._CTX)) % V
                P[k, c, s] += q[j]
    return P


def context_id(x: list[int], t: int, V: int, order: int) -> int:
    return sum(x[t - 1 - i] * V**i for i in range(order))


def brute_logprobs(tokens_BxT, P, prior, V: int, order: int, tail: float = 0.0) -> np.ndarray:
    """Bayes rule by hand over the skills in P (plus a uniform component of weight `tail`)."""
    out = []
    for x in tokens_BxT.tolist():
        w = list(prior) + ([tail] if tail else [])
        row = []
        for t in range(1, len(x)):
            if t < order:
                row.append(-math.log(V))
                continue
            c = context_id(x, t, V, order)
            like = [P[k, c, x[t]] for k in range(len(prior))] + ([1.0 / V] if tail else [])
            pred = sum(wi * li for wi, li in zip(w, like, strict=True)) / sum(w)
            row.append(math.log(pred) if pred > 0 else -math.inf)
            w = [wi * li for wi, li in zip(w, like, strict=True)]
            if sum(w) == 0:  # impossible prefix: every later target is impossible too
                row += [-math.inf] * (len(x) - 1 - t)
                break
        out.append(row)
    return np.array(out)


def zipf(K: int, a: float) -> np.ndarray:
    w = (np.arange(K) + 1.0) ** -a
    return w / w.sum()


# -------------------------------------------------------------------------------------------- determinism


def test_batches_are_deterministic_seeded_and_well_formed():
    kw = dict(vocab_size=64, seq_len=32, n_skills=256)
    src = SkillMixture(**kw, seed=3, eval_sequences=16)
    a = src.train_batch(5, 8)
    assert a.dtype == np.int32 and a.shape == (8, 33)
    assert a.min() >= 0 and a.max() < 64
    np.testing.assert_array_equal(a, src.train_batch(5, 8))
    np.testing.assert_array_equal(a, SkillMixture(**kw, seed=3).train_batch(5, 8))
    assert not np.array_equal(a, src.train_batch(6, 8))
    assert not np.array_equal(a, SkillMixture(**kw, seed=4).train_batch(5, 8))
    ev = src.eval_set().tokens_ExLp1
    assert ev.dtype == np.int32 and ev.shape == (16, 33)
    train_rows = {r.tobytes() for step in range(50) for r in src.train_batch(step, 16)}
    assert not any(r.tobytes() in train_rows for r in ev)
    assert src.eval_set() is src.eval_set()  # cached


def test_table_and_hash_sampling_paths_agree():
    for order in (1, 2):
        src = SkillMixture(vocab_size=16, seq_len=40, n_skills=50, order=order, seed=1)
        fast, k_fast = src.sample(np.random.default_rng(9), 12, table=True)
        slow, k_slow = src.sample(np.random.default_rng(9), 12, table=False)
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_array_equal(k_fast, k_slow)


def test_from_config_and_meta():
    cfg = DataConfig(seq_len=24, eval_sequences=4, n_skills=100, zipf_exponent=1.5, branching=3,
                     skill_order=2)
    src = make_source(cfg, vocab_size=32, seed=7)
    assert isinstance(src, SkillMixture)
    got = (src.vocab_size, src.seq_len, src.n_skills, src.zipf_exponent, src.branching, src.order, src.seed)
    assert got == (32, 24, 100, 1.5, 3, 2, 7)
    assert src.train_batch(0, 2).shape == (2, 25)
    ev = src.eval_set()
    assert src.meta["source"] == "synthetic" and src.meta["entropy_floor"] == ev.entropy
    with pytest.raises(ValueError, match="order"):
        SkillMixture(vocab_size=8, seq_len=8, order=4)


# ------------------------------------------------------------------------------------------ exact scoring


@pytest.mark.parametrize("order", [1, 2])
def test_token_logprobs_match_brute_force(order):
    V, K, b, seed = 8, 3, 3, 11
    src = SkillMixture(vocab_size=V, seq_len=12, n_skills=K, branching=b, order=order, seed=seed)
    P = successor_tables(V, K, b, order, seed)
    tokens, _ = src.sample(np.random.default_rng(0), 10)
    random = np.random.default_rng(1).integers(0, V, (4, 13)).astype(np.int32)  # mostly impossible: -inf
    for toks in (tokens, random):
        np.testing.assert_allclose(src.token_logprobs(toks), brute_logprobs(toks, P, zipf(K, 1.3), V, order),
                                   rtol=0, atol=1e-10)
    for n in (1, 2):  # the oracle: top-n skills plus a uniform component carrying the tail mass
        prior = zipf(K, 1.3)
        want = -brute_logprobs(tokens, P[:n], prior[:n], V, order, tail=prior[n:].sum()).mean()
        assert src.oracle_loss(n, tokens) == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("order", [1, 2])
def test_sampled_transitions_follow_the_scored_distribution(order):
    V, K, b, seed = 8, 3, 3, 5
    src = SkillMixture(vocab_size=V, seq_len=64, n_skills=K, branching=b, order=order, seed=seed)
    P = successor_tables(V, K, b, order, seed)
    tokens, k = src.sample(np.random.default_rng(2), 3000)
    counts = np.bincount(k, minlength=K)
    expect = zipf(K, 1.3) * len(k)
    assert ((counts - expect) ** 2 / expect).sum() < 20  # chi-square, 2 dof
    assert (tokens[:, :order] >= 0).all()
    for skill in range(K):
        x = tokens[k == skill].astype(np.int64)
        c = sum(x[:, order - 1 - i:-1 - i] * V**i for i in range(order))
        obs = np.zeros((V**order, V))
        np.add.at(obs, (c.ravel(), x[:, order:].ravel()), 1)
        assert obs[P[skill] == 0].sum() == 0  # never a transition the skill does not have
        exp = P[skill] * obs.sum(1, keepdims=True)
        ok = exp > 0
        chi2, dof = ((obs - exp)[ok] ** 2 / exp[ok]).sum(), ok.sum() - (obs.sum(1) > 0).sum()
        assert chi2 < dof + 6 * math.sqrt(2 * dof), (skill, chi2, dof)


# ------------------------------------------------------------------------------- entropy and capacity curve


def test_entropy_floor_and_oracle_monotone():
    src = SkillMixture(vocab_size=256, seq_len=128)  # the defaults
    ev = src.eval_set()
    assert ev.tokens_ExLp1.shape == (64, 129)
    assert 0.5 < ev.entropy < math.log(256) - 3  # well below uniform: skills are nearly deterministic
    losses = [src.oracle_loss(n, ev.tokens_ExLp1) for n in (0, 4, 16, 64, 256, 1024, 4096)]
    assert losses[0] == pytest.approx(math.log(256), abs=1e-12)
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False)), losses
    exact = float(-src.token_logprobs(ev.tokens_ExLp1).mean())
    assert losses[-1] == pytest.approx(exact, abs=1e-9)
    assert ev.entropy == pytest.approx(exact, abs=0.02)  # computed on one sequence per stratum


def test_eval_set_is_stratified_over_the_skill_prior_and_cuts_the_standard_error():
    """Equal-mass strata of the prior, 4 sequences each: the mean stays unbiased and, for a predictor that knows
    only some skills (the oracle's per-sequence loss), the standard error drops several-fold vs a random set."""
    src = SkillMixture(vocab_size=256, seq_len=64, n_skills=16384, eval_sequences=512)
    ev = src.eval_set()
    G = 512 // syn.EVAL_STRATUM
    np.testing.assert_array_equal(ev.strata_E, np.arange(512) % G)
    # each sequence's skill lies in its stratum's slice of the prior's CDF
    _, k_E = src.sample(np.random.default_rng([src.seed, 2]), 512,
                        skill_u_B=(ev.strata_E + np.random.default_rng([src.seed, 2]).random(512)) / G)
    cdf_hi, cdf_lo = src.cumprior_K[k_E], src.cumprior_K[k_E] - src.prior_K[k_E]
    assert np.all(cdf_hi >= ev.strata_E / G - 1e-12) and np.all(cdf_lo <= (ev.strata_E + 1) / G + 1e-12)
    loss_strat = -src._mixture_logprobs(ev.tokens_ExLp1, 100, uniform=True).mean(1)
    rand, _ = src.sample(np.random.default_rng(3), 512)
    loss_rand = -src._mixture_logprobs(rand, 100, uniform=True).mean(1)
    mean_s, se_s = ev.mean_and_se(loss_strat)
    se_r = loss_rand.std(ddof=1) / np.sqrt(512)
    assert se_s < se_r / 4, (se_s, se_r)
    assert abs(mean_s - loss_rand.mean()) < 3 * np.hypot(se_s, se_r)  # the same expectation


def test_stratified_mean_and_standard_error_by_hand():
    ev = EvalSet(tokens_ExLp1=np.zeros((6, 3), np.int32), strata_E=np.array([0, 1, 2, 0, 1, 2]))
    y = np.array([1.0, 2.0, 4.0, 3.0, 2.0, 6.0])
    mean, se = ev.mean_and_se(y)
    # strata means 2, 2, 5; variances 2, 0, 2 over 2 each: SE = sqrt((2/2 + 0 + 2/2)) / 3
    assert mean == pytest.approx(3.0) and se == pytest.approx(np.sqrt(2.0) / 3)
    plain = EvalSet(tokens_ExLp1=np.zeros((6, 3), np.int32))
    assert plain.mean_and_se(y) == pytest.approx((y.mean(), y.std(ddof=1) / np.sqrt(6)))


def test_capacity_curve_is_a_power_law():
    src = SkillMixture(vocab_size=256, seq_len=64)  # defaults: K=4096, a=1.3, b=4
    tokens, _ = src.sample(np.random.default_rng([0, 7]), 512)
    entropy = -src.token_logprobs(tokens).mean()
    ns = np.array([16, 64, 256, 1024])
    reducible = np.array([src.oracle_loss(n, tokens) - entropy for n in ns])
    slope, icept = np.polyfit(np.log(ns), np.log(reducible), 1)
    resid = np.log(reducible) - (slope * np.log(ns) + icept)
    r2 = 1 - resid.var() / np.log(reducible).var()
    assert -0.7 < slope < -0.3 and r2 > 0.95, (slope, r2)  # asymptotically a-1 = 0.3, steepened by finite K
    # the quantization picture: reducible loss = (tail mass) x (per-token gap of a uniform guess)
    tail = np.array([src.prior_K[n:].sum() for n in ns])
    gap = math.log(256) - src.meta["skill_entropy"]
    np.testing.assert_allclose(reducible / tail, gap, rtol=0.3)
