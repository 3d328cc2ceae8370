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


@dataclass
class Source:
    """Base class: deterministic, seeded, addressable by step so a resumed run neither replays nor skips."""

    vocab_size: int
    seq_len: int
    meta: dict = field(default_factory=dict)  # recorded in summary.json (entropy floor, corpus stats, ...)

    def train_batch(self, step: int, batch_size: int) -> np.ndarray:
        """Returns the int32 [batch_size, seq_len + 1] batch for `step`; a pure function of (seed, step)."""
        raise NotImplementedError

    def eval_set(self) -> EvalSet:
        raise NotImplementedError

    def epochs_at(self, tokens: int) -> float | None:
        """How many passes over the unique training tokens `tokens` amounts to (None for infinite sources)."""
        return None
