"""Data sources: synthetic with a known entropy floor (the embedded default) and real text via HF datasets."""

from __future__ import annotations

from testbed.config import DataConfig
from testbed.data.base import EvalSet, Source

__all__ = ["EvalSet", "Source", "make_source"]


def make_source(cfg: DataConfig, vocab_size: int, seed: int) -> Source:
    """Builds the configured source; `vocab_size` is the model's (the synthetic alphabet size)."""
    if cfg.source == "synthetic":
        from testbed.data.synthetic import SkillMixture

        return SkillMixture.from_config(cfg, vocab_size=vocab_size, seed=seed)
    from testbed.data.text import TextSource

    return TextSource.from_config(cfg, seed=seed)
