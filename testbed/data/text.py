"""Real text through HF `datasets`: local files or a streamed hub dataset, byte or BPE tokens, packed windows.

Pipeline: documents -> exact-duplicate removal -> document-level train/val split -> tokenizer (byte, BPE
trained on the train split only, or a pretrained tokenizer.json / hub tokenizer) -> one token stream per split
(each document followed by a separator), tokenized once into a memory-mapped cache on disk (testbed/data/tokcache.py)
-> windows of seq_len + 1 tokens at stride seq_len, so every target token is predicted once per epoch. Memory stays
flat as the corpus grows: documents are streamed, never held, and a run reads only the windows of its batches.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

import testbed.data.tokcache as tokcache
from testbed.config import ConfigError, DataConfig
from testbed.data.base import EvalSet, Source
from testbed.data.tokenizer import TOKENIZER_VERSION, ByteTokenizer, HFTokenizer

BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
HUB_PROBE_TIMEOUT_S = 5.0
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


def _cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or "~/.cache/testbed").expanduser()


# ---------------------------------------------------------------------------------------------- documents


def resolve_files(path: str, fmt: str) -> tuple[list[Path], str] | None:
    """Local files for `path` (file, folder or glob) and their datasets builder; None means a hub name."""
    p = Path(path).expanduser()
    if any(c in path for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise ConfigError(f"data.path: the glob {path!r} matches no files")
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        if fmt == "auto":
            files = [f for f in files if f.suffix.lower() in BUILDERS]
        else:
            files = [f for f in files if BUILDERS.get(f.suffix.lower()) == fmt]
        if not files:
            kind = "" if fmt == "auto" else f"{fmt} "
            raise ConfigError(f"data.path: folder {path!r} holds no {kind}files with a supported extension "
                              f"({', '.join(BUILDERS)})")
    elif p.is_file():
        files = [p]
    elif fmt == "hub" or (fmt == "auto" and _HUB_NAME.match(path) and p.suffix.lower() not in BUILDERS
                          and not Path(path.split("/")[0]).exists()):  # "data/x" with data/ present is local
        return None
    else:
        raise ConfigError(f"data.path: {path!r} does not exist; give a file, a folder, a glob or a hub "
                          "dataset name (data.format: hub). For Shakespeare run "
                          "`testbed fetch-corpus shakespeare` first")
    if fmt == "hub":
        raise ConfigError(f"data.format: 'hub' but data.path {path!r} is a local path; use data.format: auto")
    if fmt != "auto":
        return files, fmt
    builders = {BUILDERS.get(f.suffix.lower()) for f in files}
    if None in builders:
        bad = next(f for f in files if f.suffix.lower() not in BUILDERS)
        raise ConfigError(f"data.path: unsupported extension {bad.suffix!r} ({bad}); supported are "
                          f"{', '.join(BUILDERS)}, or set data.format to text/json/parquet")
    if len(builders) > 1:
        raise ConfigError(f"data.path: {path!r} mixes formats ({', '.join(sorted(builders))}); point it at "
                          "files of one format or set data.format")
    return files, builders.pop()


def _iter_rows(rows, text_field: str, where: str, max_bytes: int | None = None) -> Iterator[str]:
    """The text field of dataset rows, one document at a time, stopping once `max_bytes` of text were read."""
    n_chars = 0
    for row in rows:
        if text_field not in row:
            raise ConfigError(f"data.text_field: {text_field!r} is not a field of {where}; its fields are "
                              f"{', '.join(map(str, row))}")
        text = row[text_field]
        if text is None:
            continue
        if not isinstance(text, str):
            raise ConfigError(f"data.text_field: {text_field!r} in {where} holds {type(text).__name__}, "
                              "not text; point it at a string field")
        yield text
        n_chars += len(text)
        if max_bytes is not None and n_chars >= max_bytes:
            return


def _iter_local(files: list[Path], builder: str, text_field: str) -> Iterator[str]:
    """One document per text file (sample_by=document: a file is a work, not many one-line docs) or row, streamed
    (no Arrow copy, nothing held): the token cache reads the corpus twice rather than keeping it."""
    import datasets

    kw = {"sample_by": "document"} if builder == "text" else {}
    field = "text" if builder == "text" else text_field
    # load_dataset pings the hub to count downloads even for local files (seconds of DNS timeout offline)
    counts, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS, False
    try:
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True,
                                   **kw)
        where = f"{files[0]}" + (f" (+{len(files) - 1} more files)" if len(files) > 1 else "")
        yield from _iter_rows(ds, field, where)
    except ConfigError:
        raise
    except Exception as e:  # malformed JSON/parquet, undecodable bytes: name the input and the error
        raise ConfigError(f"data.path: could not read {builder} files ({files[0]}...): "
                          f"{type(e).__name__}: {e}") from None
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts


def _hub_offline() -> bool:
    import datasets
    import huggingface_hub

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def hub_bytes(cfg: DataConfig) -> int:
    """Text streamed from a hub dataset: data.hub_max_bytes, raised only when max_unique_tokens needs more. A cap
    below it does not shrink the download, so the split and tokenizer stay the same across max_unique_tokens
    values; BPE averages well under 8 bytes/token."""
    max_bytes = cfg.hub_max_bytes
    if cfg.max_unique_tokens is not None:
        per_token = 1 if cfg.tokenizer == "byte" else 8
        need = 1.1 * cfg.max_unique_tokens * per_token / max(1 - cfg.val_fraction, 0.5)
        max_bytes = max(max_bytes, int(need))
    return max_bytes


def _hub_stream(cfg: DataConfig) -> Callable[[], Iterator[str]]:
    """Checks the hub dataset exists (in seconds), then streams a bounded prefix of its train split per call;
    `path` is `name` or `name:config`."""
    import datasets
    import huggingface_hub

    name, _, config = cfg.path.partition(":")
    hint = (f"data.path: {cfg.path!r} is not a local file or folder, so it was taken as a Hugging Face hub "
            "dataset, and ")
    if _hub_offline():
        raise ConfigError(hint + "offline mode (HF_HUB_OFFLINE) is set; use local files or unset it")
    url = f"{huggingface_hub.constants.ENDPOINT}/api/datasets/{name}"
    try:  # fail in seconds, not after the hub client's retries with backoff
        status = huggingface_hub.get_session().head(url, timeout=HUB_PROBE_TIMEOUT_S).status_code
    except Exception as e:
        raise ConfigError(hint + f"the hub is unreachable ({type(e).__name__}: {e}); fix the path, use local "
                          "files, or check the network") from None
    if status == 404:
        raise ConfigError(hint + "no such dataset exists on the hub; fix the path")

    def stream() -> Iterator[str]:
        try:
            ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
            yield from _iter_rows(ds, cfg.text_field, f"hub dataset {cfg.path!r}", max_bytes=hub_bytes(cfg))
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(hint + f"loading it failed ({type(e).__name__}: {e})") from None

    return stream


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Held-out documents picked by content-hash rank: the same for every seed and file order."""
    if len(docs) == 1:  # one document: cut its tail off as validation, at a line break when there is one
        doc = docs[0]
        cut = len(doc) - max(1, int(np.ceil(val_fraction * len(doc))))
        nl = doc.find("\n", cut)
        cut = nl + 1 if 0 < nl + 1 < len(doc) else max(cut, 1)
        return [doc[:cut]], [doc[cut:]]
    k = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    ranked = sorted(range(len(docs)), key=lambda i: hashlib.sha256(docs[i].encode("utf-8")).digest())
    val_ids = set(ranked[:k])
    return [d for i, d in enumerate(docs) if i not in val_ids], [docs[i] for i in ranked[:k]]


# ---------------------------------------------------------------------------------------------- tokenizers




# ---------------------------------------------------------------------------------------------- source


class TextSource(Source):
    """Shuffled non-overlapping windows of a fixed token stream; order is a pure function of (seed, step)."""

    def __init__(self, train_T: np.ndarray, eval_ExLp1: np.ndarray, *, vocab_size: int, seq_len: int,
                 seed: int, bytes_per_token: float, meta: dict | None = None):
        super().__init__(vocab_size=vocab_size, seq_len=seq_len, meta=meta or {})
        self.train_T = train_T
        self.n_windows = (len(train_T) - 1) // seq_len
        if self.n_windows < 1:
            raise ConfigError(f"data.seq_len: the training stream has {len(train_T)} tokens, fewer than one "
                              f"window of seq_len + 1 = {seq_len + 1}; lower data.seq_len or add text")
        self.seed = seed
        self.eval_ExLp1 = eval_ExLp1
        self.bytes_per_token = bytes_per_token
        self.tokenizer: ByteTokenizer | HFTokenizer | None = None  # set by from_config, for decoding samples
        self._perms: dict[int, np.ndarray] = {}

    @property
    def train_tokens_unique(self) -> int:
        """Distinct target tokens per epoch (windows share only their boundary token)."""
        return self.n_windows * self.seq_len

    def _perm(self, epoch: int) -> np.ndarray:
        perm_N = self._perms.get(epoch)
        if perm_N is None:
            perm_N = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}  # keep the current epochs
            self._perms[epoch] = perm_N
        return perm_N

    def train_batch(self, step: int, batch_size: int) -> np.ndarray:
        return self.train_rows(step, batch_size, np.arange(batch_size))

    def train_rows(self, step: int, batch_size: int, rows: np.ndarray) -> np.ndarray:
        """Only the windows of `rows` are read from the (memory-mapped) token file."""
        i_B = step * batch_size + np.asarray(rows, dtype=np.int64)
        epoch_B, pos_B = np.divmod(i_B, self.n_windows)
        window_B = np.empty_like(pos_B)
        for e in np.unique(epoch_B):
            sel_B = epoch_B == e
            window_B[sel_B] = self._perm(int(e))[pos_B[sel_B]]
        idx_BxLp1 = window_B[:, None] * self.seq_len + np.arange(self.seq_len + 1)
        return self.train_T[idx_BxLp1].astype(np.int32)

    def eval_set(self) -> EvalSet:
        return EvalSet(tokens_ExLp1=self.eval_ExLp1, entropy=None, bytes_per_token=self.bytes_per_token)

    def epochs_at(self, tokens: int) -> float:
        return tokens / self.train_tokens_unique

    @classmethod
    def from_config(cls, cfg: DataConfig, seed: int) -> TextSource:
        if seed < 0:
            raise ConfigError(f"seed: must be >= 0 for text data (it seeds the window order), got {seed}")
        if cfg.tokenizer == "bpe" and cfg.bpe_vocab_size < 257:
            raise ConfigError(f"data.bpe_vocab_size: byte-level BPE needs 256 byte tokens + end-of-text, so "
                              f"at least 257; got {cfg.bpe_vocab_size}")
        cache_dir, L = _cache_dir(cfg), cfg.seq_len
        resolved = resolve_files(cfg.path, cfg.format)
        if resolved is None:
            stream, builder, n_files = _hub_stream(cfg), "hub", 0
            ident = ["hub", cfg.path, hub_bytes(cfg)]
        else:
            files, builder = resolved
            stream, n_files = (lambda: _iter_local(files, builder, cfg.text_field)), len(files)
            ident = ["local", tokcache.file_stats(files), builder]
        corpus_key = tokcache.key(ident, cfg.text_field, cfg.val_fraction)
        tok_spec = {"byte": "byte", "bpe": f"bpe:{cfg.bpe_vocab_size}:v{TOKENIZER_VERSION}",
                    "pretrained": f"pretrained:{cfg.tokenizer_name}"}[cfg.tokenizer]
        pretrained = HFTokenizer.pretrained(cfg.tokenizer_name) if cfg.tokenizer == "pretrained" else None
        if pretrained is not None:
            tok_spec += f":{pretrained.key}"
        folder = cache_dir / "tokens" / tokcache.key(corpus_key, tok_spec)
        entry = tokcache.open_entry(folder)
        if entry is None:
            tokenizer = _build_entry(cfg, folder, stream, corpus_key, cache_dir, pretrained)
            entry = tokcache.open_entry(folder)
        else:
            tokenizer = _tokenizer_of(entry[2], pretrained)
        train_T, val_T, meta_c = entry
        n_train_total = len(train_T)
        if cfg.max_unique_tokens is not None:
            train_T = train_T[: cfg.max_unique_tokens + 1]  # +1: the last window's final target
            if len(train_T) < L + 1:
                raise ConfigError(f"data.max_unique_tokens: {cfg.max_unique_tokens} is less than one window "
                                  f"(seq_len = {L}); raise it or lower data.seq_len")
        n_eval = min(cfg.eval_sequences, (len(val_T) - 1) // L)
        if n_eval < 1:
            raise ConfigError(f"data.val_fraction: the validation split ({meta_c['val_documents']} documents) has "
                              f"{len(val_T)} tokens, fewer than one window of seq_len + 1 = {L + 1}; lower "
                              "data.seq_len or raise data.val_fraction")
        eval_ExLp1 = (val_T[np.arange(n_eval)[:, None] * L + np.arange(L + 1)]).astype(np.int32)
        bytes_per_token = float(tokenizer.token_bytes_V[eval_ExLp1[:, 1:]].mean())
        meta = {"source": "text", "path": cfg.path, "format": builder, "files": n_files,
                "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                **{k: meta_c[k] for k in ("documents", "dropped_documents", "train_documents", "val_documents",
                                          "val_tokens", "data_hash")},
                "train_tokens_total": n_train_total, "max_unique_tokens": cfg.max_unique_tokens,
                "eval_sequences": n_eval, "bytes_per_token": bytes_per_token, "token_cache": str(folder)}
        if getattr(tokenizer, "path", None) is not None:
            meta["tokenizer_path"] = str(tokenizer.path)
        src = cls(train_T, eval_ExLp1, vocab_size=tokenizer.vocab_size, seq_len=L, seed=seed,
                  bytes_per_token=bytes_per_token, meta=meta)
        src.tokenizer = tokenizer
        src.meta.update(train_tokens_unique=src.train_tokens_unique, train_windows=src.n_windows)
        return src


def _build_entry(cfg: DataConfig, folder: Path, stream: Callable[[], Iterator[str]], corpus_key: str,
                 cache_dir: Path, pretrained: HFTokenizer | None):
    """The token cache entry for this corpus and tokenizer (testbed/data/tokcache.py); returns the tokenizer."""
    order, n_loaded, only = tokcache.scan(stream())
    if not order:
        raise ConfigError(f"data.path: {cfg.path!r} holds no text (empty files or empty {cfg.text_field!r} fields)")
    single = None
    if len(order) == 1:
        (train_doc,), (val_doc,) = split_documents([only], cfg.val_fraction)
        single, val = (train_doc, val_doc), []
    else:
        val = tokcache.validation_hashes(order, cfg.val_fraction)
    val_set = set(val)

    def train_docs() -> Iterator[str]:
        if single is not None:
            yield single[0]
            return
        yield from (doc for d, doc in tokcache.distinct(stream()) if d not in val_set)

    if cfg.tokenizer == "byte":
        tokenizer = ByteTokenizer()
    elif cfg.tokenizer == "bpe":
        tokenizer = HFTokenizer.bpe(train_docs, cfg.bpe_vocab_size, cache_dir, corpus_key)
    else:
        tokenizer = pretrained
    n_val = 1 if single is not None else len(val)
    meta = {"documents": len(order), "dropped_documents": n_loaded - len(order),
            "train_documents": len(order) if single is not None else len(order) - n_val, "val_documents": n_val,
            "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "tokenizer_key": tokenizer.key,
            "tokenizer_path": str(tokenizer.path) if getattr(tokenizer, "path", None) else None}
    tokcache.build(folder, stream, order, val, tokenizer.encode_each, tokcache.dtype_for(tokenizer.vocab_size),
                   meta, single)
    return tokenizer


def _tokenizer_of(meta: dict, pretrained: HFTokenizer | None):
    """The tokenizer a cache entry was built with (for decoding and bytes per token)."""
    from tokenizers import Tokenizer

    if meta["tokenizer"] == "byte":
        return ByteTokenizer()
    if meta["tokenizer"] == "pretrained":
        return pretrained
    path = Path(meta["tokenizer_path"])
    return HFTokenizer(Tokenizer.from_file(str(path)), "bpe", meta["tokenizer_key"], path)
