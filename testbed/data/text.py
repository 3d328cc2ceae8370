"""Real text through HF `datasets`: local files or a streamed hub dataset, byte or BPE tokens, packed windows.

Pipeline: documents -> exact-duplicate removal -> document-level train/val split -> tokenizer (byte, or BPE
trained on the train split only) -> one token stream per split (each document followed by a separator)
-> windows of seq_len + 1 tokens at stride seq_len, so every target token is predicted once per epoch.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from pathlib import Path

import numpy as np

from testbed.config import ConfigError, DataConfig
from testbed.data.base import EvalSet, Source

BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
EOT = "<|endoftext|>"  # BPE document separator (a special token, id 0)
BYTE_SEP = 0  # byte tokenizer's separator: NUL never occurs in ordinary UTF-8 text, so it only marks ends
TOKENIZER_VERSION = 1  # bump when the BPE recipe changes, so cached tokenizers and token arrays are rebuilt
HUB_MAX_BYTES = 64 << 20  # hub text streamed per run (more only if max_unique_tokens needs more)
HUB_PROBE_TIMEOUT_S = 5.0
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


def _cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or "~/.cache/testbed").expanduser()


def _digest(*parts: str | bytes | list[str]) -> str:
    """Content hash of strings/byte strings/document lists, length-prefixed so boundaries matter."""
    h = hashlib.sha256()
    for part in parts:
        for item in part if isinstance(part, list) else [part]:
            b = item.encode("utf-8") if isinstance(item, str) else item
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


def _atomic_save(path: Path, write) -> None:
    """Writes via a temp file and rename so concurrent runs sharing a cache never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


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


def _rows_to_docs(rows, text_field: str, where: str, max_bytes: int | None = None) -> list[str]:
    """Pulls the text field out of dataset rows, stopping once `max_bytes` of text are collected."""
    docs, n_chars = [], 0
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
        docs.append(text)
        n_chars += len(text)
        if max_bytes is not None and n_chars >= max_bytes:
            break
    return docs


def _load_local(files: list[Path], builder: str, text_field: str) -> list[str]:
    """One document per text file (sample_by=document: a file is a work, not many one-line docs) or row."""
    import datasets

    kw = {"sample_by": "document"} if builder == "text" else {}
    field = "text" if builder == "text" else text_field
    # load_dataset pings the hub to count downloads even for local files (seconds of DNS timeout offline)
    counts, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS, False
    try:  # streaming reads the files in order without writing an Arrow copy; our caches make re-runs fast
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True,
                                   **kw)
        where = f"{files[0]}" + (f" (+{len(files) - 1} more files)" if len(files) > 1 else "")
        return _rows_to_docs(ds, field, where)
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


def _load_hub(cfg: DataConfig) -> list[str]:
    """Streams a bounded prefix of a hub dataset's train split; `path` is `name` or `name:config`."""
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
    # A cap below the default does not shrink the download, so the val split and tokenizer stay the same
    # across max_unique_tokens values; BPE averages well under 8 bytes/token.
    max_bytes = HUB_MAX_BYTES
    if cfg.max_unique_tokens is not None:
        per_token = 1 if cfg.tokenizer == "byte" else 8
        need = 1.1 * cfg.max_unique_tokens * per_token / max(1 - cfg.val_fraction, 0.5)
        max_bytes = max(max_bytes, int(need))
    try:
        ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
        return _rows_to_docs(ds, cfg.text_field, f"hub dataset {cfg.path!r}", max_bytes=max_bytes)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(hint + f"loading it failed ({type(e).__name__}: {e})") from None


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


class ByteTokenizer:
    """UTF-8 bytes, vocab 256, NUL after each document: bits per byte is just loss / ln 2."""

    name = "byte"
    vocab_size = 256
    key = "byte"

    def encode(self, docs: list[str]) -> np.ndarray:
        sep = bytes([BYTE_SEP])
        return np.frombuffer(b"".join(d.encode("utf-8") + sep for d in docs), dtype=np.uint8).copy()

    def decode(self, ids) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8)).decode("utf-8", errors="replace")

    @property
    def token_bytes_V(self) -> np.ndarray:
        return np.ones(256, np.int64)


def train_bpe(train_docs: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style pre-tokenization, no prefix space) so any text encodes and round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_docs, trainer=trainer)
    return tok


class BpeTokenizer:
    """A BPE tokenizer trained on the training split only, cached under cache_dir by content hash."""

    name = "bpe"

    def __init__(self, train_docs: list[str], vocab_size: int, cache_dir: Path):
        import tokenizers
        from tokenizers import Tokenizer

        recipe = f"bpe:{vocab_size}:v{TOKENIZER_VERSION}:tokenizers-{tokenizers.__version__}"
        self.key = _digest(train_docs, recipe)
        path = cache_dir / "bpe" / f"{self.key[:32]}.json"
        if path.is_file():
            self.tok = Tokenizer.from_file(str(path))
        else:
            self.tok = train_bpe(train_docs, vocab_size)
            _atomic_save(path, lambda p: self.tok.save(str(p)))
        self.tok.encode_special_tokens = True  # a literal "<|endoftext|>" in a document is text, not EOT
        self.path = path
        self.vocab_size = self.tok.get_vocab_size()
        self.eot = self.tok.token_to_id(EOT)

    def encode(self, docs: list[str]) -> np.ndarray:
        dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.int32
        out = []
        for i in range(0, len(docs), 1024):
            for enc in self.tok.encode_batch(docs[i:i + 1024], add_special_tokens=False):
                out += [np.asarray(enc.ids, dtype), np.array([self.eot], dtype)]
        return np.concatenate(out) if out else np.zeros(0, dtype)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def token_bytes_V(self) -> np.ndarray:
        """Bytes each token stands for (ByteLevel maps a byte to a char); EOT counts 1, like the NUL byte."""
        n_V = np.ones(self.vocab_size, np.int64)
        for token, i in self.tok.get_vocab().items():
            n_V[i] = 1 if i == self.eot else len(token)
        return n_V


def _encode_cached(tokenizer, docs: list[str], cache_dir: Path) -> np.ndarray:
    """Byte encoding is a memcpy; BPE streams are cached as .npy keyed by tokenizer and text hashes."""
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.encode(docs)
    path = cache_dir / "tokens" / f"{_digest(tokenizer.key, docs)[:32]}.npy"
    if path.is_file():
        return np.load(path)
    tokens_T = tokenizer.encode(docs)

    def write(p: Path) -> None:
        with open(p, "wb") as f:  # a file object, since np.save would append ".npy" to the temp name
            np.save(f, tokens_T)

    _atomic_save(path, write)
    return tokens_T


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
        self.tokenizer: ByteTokenizer | BpeTokenizer | None = None  # set by from_config, for decoding samples
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
        i_B = step * batch_size + np.arange(batch_size, dtype=np.int64)
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
            docs, builder, n_files = _load_hub(cfg), "hub", 0
        else:
            files, builder = resolved
            docs, n_files = _load_local(files, builder, cfg.text_field), len(files)
        n_loaded = len(docs)
        docs = list(dict.fromkeys(d for d in docs if d.strip()))  # drop empty and exactly repeated documents
        if not docs:
            raise ConfigError(f"data.path: {cfg.path!r} holds no text (empty files or empty "
                              f"{cfg.text_field!r} fields)")
        train_docs, val_docs = split_documents(docs, cfg.val_fraction)
        tokenizer = (ByteTokenizer() if cfg.tokenizer == "byte"
                     else BpeTokenizer(train_docs, cfg.bpe_vocab_size, cache_dir))
        train_T = _encode_cached(tokenizer, train_docs, cache_dir)
        val_T = _encode_cached(tokenizer, val_docs, cache_dir)
        n_train_total = len(train_T)
        if cfg.max_unique_tokens is not None:
            train_T = train_T[: cfg.max_unique_tokens + 1]  # +1: the last window's final target
            if len(train_T) < L + 1:
                raise ConfigError(f"data.max_unique_tokens: {cfg.max_unique_tokens} is less than one window "
                                  f"(seq_len = {L}); raise it or lower data.seq_len")
        n_eval = min(cfg.eval_sequences, (len(val_T) - 1) // L)
        if n_eval < 1:
            raise ConfigError(f"data.val_fraction: the validation split ({len(val_docs)} documents) has "
                              f"{len(val_T)} tokens, fewer than one window of seq_len + 1 = {L + 1}; lower "
                              "data.seq_len or raise data.val_fraction")
        eval_ExLp1 = (val_T[np.arange(n_eval)[:, None] * L + np.arange(L + 1)]).astype(np.int32)
        bytes_per_token = float(tokenizer.token_bytes_V[eval_ExLp1[:, 1:]].mean())
        meta = {"source": "text", "path": cfg.path, "format": builder, "files": n_files,
                "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "documents": len(docs),
                "dropped_documents": n_loaded - len(docs), "train_documents": len(train_docs),
                "val_documents": len(val_docs), "train_tokens_total": n_train_total,
                "max_unique_tokens": cfg.max_unique_tokens, "val_tokens": len(val_T),
                "eval_sequences": n_eval, "bytes_per_token": bytes_per_token,
                "data_hash": _digest(tokenizer.key, train_docs, val_docs)[:16]}
        if isinstance(tokenizer, BpeTokenizer):
            meta["tokenizer_path"] = str(tokenizer.path)
        src = cls(train_T, eval_ExLp1, vocab_size=tokenizer.vocab_size, seq_len=L, seed=seed,
                  bytes_per_token=bytes_per_token, meta=meta)
        src.tokenizer = tokenizer
        src.meta.update(train_tokens_unique=src.train_tokens_unique, train_windows=src.n_windows)
        return src
