"""The interface every data source implements: step-addressable batches and a fixed eval set."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EvalSet:
    """A fixed held-out set; `tokens_ExLp1[:, :-1]` are inputs and `[:, 1:]` targets."""

    tokens_ExLp1: np.ndarray  # int32 [E, seq_len + 1]
    entropy: float | None = None  # mean true -log p(target | prefix) in nats/token, when the source knows it
    bytes_per_token: float | None = None  # mean UTF-8 bytes per target token, for bits per byte
    # stratum of each sequence when the set is a stratified sample (equal-mass strata of the source's mixture): the
    # loss is then the mean of the strata's means and its standard error the stratified one (within-stratum spread)
    strata_E: np.ndarray | None = None

    def mean_and_se(self, loss_E: np.ndarray) -> tuple[float, float]:
        """The eval loss (per-sequence losses averaged, stratum by stratum when stratified) and its standard error."""
        loss_E = np.asarray(loss_E, np.float64)
        n = len(loss_E)
        if self.strata_E is None:
            return float(loss_E.mean()), float(loss_E.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        _, h_E, n_H = np.unique(self.strata_E, return_inverse=True, return_counts=True)
        G = len(n_H)
        mean_H = np.bincount(h_E, loss_E, G) / n_H
        ss_H = np.bincount(h_E, (loss_E - mean_H[h_E]) ** 2, G)
        var_H = np.where(n_H > 1, ss_H / np.maximum(n_H - 1, 1), 0.0)
        return float(mean_H.mean()), float(np.sqrt((var_H / n_H).sum()) / G)


@dataclass
class Source:
    """Base class: deterministic, seeded, addressable by step so a resumed run neither replays nor skips."""

    vocab_size: int
    seq_len: int
    meta: dict = field(default_factory=dict)  # recorded in summary.json (entropy floor, corpus stats, ...)

    def train_batch(self, step: int, batch_size: int) -> np.ndarray:
        """Returns the int32 [batch_size, seq_len + 1] batch for `step`; a pure function of (seed, step)."""
        raise NotImplementedError

    def train_rows(self, step: int, batch_size: int, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` of train_batch(step, batch_size): what one process of a multi-host run reads (its shard).
        Sources that can read less than the whole batch (text: a few windows of the token file) override it; this
        default builds the whole batch once per step (a mesh asks for it device by device)."""
        last = self.__dict__.get("_last_batch")
        if last is None or last[0] != (step, batch_size):
            last = ((step, batch_size), self.train_batch(step, batch_size))
            self.__dict__["_last_batch"] = last
        return last[1][rows]

    def eval_set(self) -> EvalSet:
        raise NotImplementedError

    def epochs_at(self, tokens: int) -> float | None:
        """How many passes over the unique training tokens `tokens` amounts to (None for infinite sources)."""
        return None


class LazyBatch:
    """The batch of `step` as an A x micro x (L+1) view that reads only the rows it is indexed with: placed on a
    mesh (testbed.sharding.to_global) each process fills only its own devices' slices, so on several hosts each
    reads only its shard of the global batch."""

    def __init__(self, source: Source, step: int, batch_size: int, shape: tuple[int, int, int]):
        self.source, self.step, self.batch_size, self.shape = source, step, batch_size, shape

    def __getitem__(self, idx: tuple) -> np.ndarray:
        a_sl, m_sl, l_sl = (tuple(idx) + (slice(None),) * 3)[:3]
        A, micro, _ = self.shape
        a_A, m_M = np.arange(A)[a_sl], np.arange(micro)[m_sl]
        rows = (a_A[:, None] * micro + m_M[None, :]).reshape(-1)
        out = self.source.train_rows(self.step, self.batch_size, rows)
        return out.reshape(len(a_A), len(m_M), -1)[:, :, l_sl]

    def __array__(self, dtype=None, copy=None):
        full = self.source.train_batch(self.step, self.batch_size).reshape(self.shape)
        return full if dtype is None else full.astype(dtype)
