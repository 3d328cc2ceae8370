"""Tokenize once, read many: a corpus x tokenizer becomes two token files on disk that every run memory-maps.

A cache entry is a folder under CACHE_DIR/tokens/<key>/ holding train.bin and val.bin (raw uint8 / uint16 / uint32
tokens, each document followed by the tokenizer's separator) and meta.json (counts, dtype, the tokenizer, the data
hash). The key is cheap to compute before reading any text: the files' paths, sizes and modification times (or the
hub name and byte cap), the format and text field, the split fraction and the tokenizer's recipe. Building streams
the documents twice (hash them to dedupe and pick the validation split, then encode and append), so memory holds
one batch of documents, the 32-byte hashes and the validation split, not the corpus. Runs of a sweep open the same
entry; a build writes to a temporary folder that is renamed into place whole, so a concurrent reader never sees
half an entry (two builders race harmlessly: the first rename wins).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

CACHE_VERSION = 1  # bump when the layout or the split changes
BATCH_DOCS = 1024  # documents encoded per call (the tokenizer's batch API)


def key(*parts) -> str:
    """The entry's name: a hash of JSON-able parts (file stats, settings, tokenizer recipe)."""
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:32]


def file_stats(files: list[Path]) -> list[list]:
    """What identifies local input without reading it: resolved path, size, mtime (ns)."""
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def open_entry(folder: Path) -> tuple[np.memmap | np.ndarray, np.memmap | np.ndarray, dict] | None:
    """(train, val, meta) of a finished entry, memory-mapped; None when it is not there."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    dt = np.dtype(meta["dtype"])
    return _map(folder / "train.bin", dt), _map(folder / "val.bin", dt), meta


def _map(path: Path, dt: np.dtype):
    if path.stat().st_size == 0:  # np.memmap refuses empty files
        return np.zeros(0, dt)
    return np.memmap(path, dtype=dt, mode="r")


def digest_doc(doc: str) -> bytes:
    return hashlib.sha256(doc.encode("utf-8")).digest()


def distinct(docs: Iterable[str]) -> Iterator[tuple[bytes, str]]:
    """(content hash, document) of each non-empty document the first time it occurs: the one dedupe rule of every
    pass over a corpus (scan, the BPE trainer's input, build)."""
    seen: set[bytes] = set()
    for doc in docs:
        if not doc.strip():
            continue
        d = digest_doc(doc)
        if d not in seen:
            seen.add(d)
            yield d, doc


def scan(docs: Iterable[str]) -> tuple[list[bytes], int, str | None]:
    """Pass 1: the distinct non-empty documents' hashes in order, how many were read, and the document itself when
    there is exactly one (a single document is split at its tail, so the split needs its text)."""
    counted = {"n": 0}

    def count(docs_in: Iterable[str]) -> Iterator[str]:
        for doc in docs_in:
            counted["n"] += 1
            yield doc

    order: list[bytes] = []
    only = None
    for d, doc in distinct(count(docs)):
        order.append(d)
        only = doc if len(order) == 1 else None
    return order, counted["n"], only


def validation_hashes(order: list[bytes], val_fraction: float) -> list[bytes]:
    """The held-out documents: the k lowest content hashes (the same for every seed and file order), in hash
    order, k = round(val_fraction * n), at least 1, at most n - 1."""
    k = min(len(order) - 1, max(1, round(val_fraction * len(order))))
    return sorted(order)[:k]


def build(folder: Path, docs: Callable[[], Iterator[str]], order: list[bytes], val: list[bytes],
          encode_each: Callable[[list[str]], list[np.ndarray]], dtype: np.dtype, meta: dict,
          single: tuple[str, str] | None = None) -> None:
    """Pass 2: encodes every distinct document (train in corpus order, validation in hash order) into the entry;
    encode_each gives one token array per document, its separator included. `single` is (train text, validation
    text) of a one-document corpus instead."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = {"train_tokens_total": 0, "val_tokens": 0}
    held: dict[bytes, np.ndarray] = {}  # the validation documents' tokens, written in hash order at the end
    with open(tmp / "train.bin", "wb") as train_f:
        def write_train(ids: np.ndarray) -> None:
            train_f.write(np.asarray(ids, dtype).tobytes())
            counts["train_tokens_total"] += len(ids)

        if single is not None:
            (train_ids,), (val_ids,) = encode_each([single[0]]), encode_each([single[1]])
            write_train(train_ids)
            val, held = [b"val"], {b"val": val_ids}
        else:
            val_set, batch = set(val), []

            def flush() -> None:
                for (d, _), ids in zip(batch, encode_each([doc for _, doc in batch]), strict=True):
                    if d in val_set:
                        held[d] = ids
                    else:
                        write_train(ids)
                batch.clear()

            for d, doc in distinct(docs()):
                batch.append((d, doc))
                if len(batch) >= BATCH_DOCS:
                    flush()
            flush()
    with open(tmp / "val.bin", "wb") as val_f:
        for d in val:
            val_f.write(np.asarray(held[d], dtype).tobytes())
            counts["val_tokens"] += len(held[d])
    data_hash = hashlib.sha256(b"".join(order) + meta.get("tokenizer_key", "").encode()).hexdigest()[:16]
    (tmp / "meta.json").write_text(json.dumps({**meta, **counts, "dtype": dtype.name, "data_hash": data_hash}))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same entry first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
