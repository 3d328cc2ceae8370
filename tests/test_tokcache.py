"""The token cache: a corpus is tokenized once into memory-mapped files that later runs read without the text; a
changed file rebuilds it; a pretrained tokenizer.json gives the same stream as the tokenizer it was saved from."""

from __future__ import annotations

import os

import numpy as np
import pytest

from testbed import config as C
from testbed.config import ConfigError, DataConfig
from testbed.data import text
from testbed.data.text import TextSource

from .test_data_text import make_docs, write_jsonl, write_txt_dir


def source(path, tmp_path, **kw) -> TextSource:
    cfg = DataConfig(source="text", path=str(path), cache_dir=str(tmp_path / "cache"), **{"seq_len": 32, **kw})
    return TextSource.from_config(cfg, seed=0)


def test_the_corpus_is_read_once_and_a_changed_file_rebuilds_the_entry(tmp_path, monkeypatch):
    docs = make_docs(30)
    path = write_jsonl(tmp_path / "docs.jsonl", docs)
    first = source(path, tmp_path)
    assert isinstance(first.train_T, np.memmap) and first.train_T.dtype == np.uint8
    entry = first.meta["token_cache"]
    assert sorted(os.listdir(entry)) == ["meta.json", "train.bin", "val.bin"]
    assert not [p for p in (tmp_path / "cache" / "tokens").iterdir() if p.name.startswith(".")]  # no temp left
    # the stream is the training documents in corpus order, each followed by the separator
    parts = first.tokenizer.decode(first.train_T).split("\0")
    assert parts[-1] == "" and len(parts) - 1 == len(docs) - first.meta["val_documents"]
    idx = [docs.index(p) for p in parts[:-1]]
    assert idx == sorted(idx)

    def boom(*a, **k):
        raise AssertionError("the corpus was read again")

    with monkeypatch.context() as m:
        m.setattr(text, "_iter_local", boom)
        again = source(path, tmp_path)  # another run of the sweep: the cache, not the text
    np.testing.assert_array_equal(again.train_T, first.train_T)
    assert again.meta["data_hash"] == first.meta["data_hash"]
    write_jsonl(path, docs[:-1] + ["a new last document " * 20])
    changed = source(path, tmp_path)
    assert changed.meta["token_cache"] != entry and changed.meta["data_hash"] != first.meta["data_hash"]


def test_a_pretrained_tokenizer_json_gives_the_stream_of_the_tokenizer_saved_there(tmp_path):
    corpus = write_txt_dir(tmp_path / "corpus", make_docs(24))
    bpe = source(corpus, tmp_path, tokenizer="bpe", bpe_vocab_size=300)
    tok_json = bpe.meta["tokenizer_path"]
    pre = source(corpus, tmp_path, tokenizer="pretrained", tokenizer_name=tok_json)
    assert pre.meta["tokenizer"] == "pretrained" and pre.vocab_size == bpe.vocab_size
    np.testing.assert_array_equal(pre.train_T, bpe.train_T)
    np.testing.assert_array_equal(pre.eval_set().tokens_ExLp1, bpe.eval_set().tokens_ExLp1)
    with pytest.raises(ConfigError, match="data.tokenizer_name"):
        source(corpus, tmp_path, tokenizer="pretrained", tokenizer_name=str(tmp_path / "missing.json"))


def test_tokenizer_and_hub_keys_are_validated_and_the_hub_cap_is_a_key():
    with pytest.raises(ConfigError, match="data.tokenizer_name"):
        C.load(None, ["train.steps=1", "data.source=text", "data.path=x", "data.tokenizer=pretrained"])
    with pytest.raises(ConfigError, match="data.hub_max_bytes"):
        C.load(None, ["train.steps=1", "data.hub_max_bytes=0"])
    cfg = DataConfig(source="text", path="someone/corpus", hub_max_bytes=1000)
    assert text.hub_bytes(cfg) == 1000
    assert text.hub_bytes(DataConfig(source="text", path="x", hub_max_bytes=1000, max_unique_tokens=10_000)) > 10_000


def test_a_shard_of_rows_reads_the_same_windows_as_the_whole_batch(tmp_path):
    src = source(write_jsonl(tmp_path / "d.jsonl", make_docs(30)), tmp_path)
    full = src.train_batch(9, 12)
    for rows in (np.arange(6), np.arange(6, 12), np.array([1, 7, 11])):
        np.testing.assert_array_equal(src.train_rows(9, 12, rows), full[rows])
