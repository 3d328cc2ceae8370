"""Tokenizers for text data: bytes, a BPE trained here on the training split, or a pretrained `tokenizers` one.

Each encodes a document followed by its separator (NUL for bytes, the end-of-text token otherwise), decodes, and
says how many bytes each token stands for (bits per byte). Token streams are built by testbed/data/text.py.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from testbed.config import ConfigError

EOT = "<|endoftext|>"  # BPE document separator (a special token, id 0)
BYTE_SEP = 0  # byte tokenizer's separator: NUL never occurs in ordinary UTF-8 text, so it only marks ends
EOS_TOKENS = (EOT, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")  # a pretrained tokenizer's document separator
TOKENIZER_VERSION = 1  # bump when the BPE recipe changes, so cached tokenizers and token arrays are rebuilt


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        b = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _atomic_save(path: Path, write) -> None:
    """Writes via a temp file and rename so concurrent runs sharing a cache never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


class ByteTokenizer:
    """UTF-8 bytes, vocab 256, NUL after each document: bits per byte is just loss / ln 2."""

    name = "byte"
    vocab_size = 256
    key = "byte"

    def encode_each(self, docs: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(d.encode("utf-8") + bytes([BYTE_SEP]), dtype=np.uint8) for d in docs]

    def encode(self, docs: list[str]) -> np.ndarray:
        return np.concatenate(self.encode_each(docs)) if docs else np.zeros(0, np.uint8)

    def decode(self, ids) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8)).decode("utf-8", errors="replace")

    @property
    def token_bytes_V(self) -> np.ndarray:
        return np.ones(256, np.int64)


def train_bpe(train_docs: Iterable[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style pre-tokenization, no prefix space) so any text encodes and round-trips; the
    documents are streamed into the trainer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_docs, trainer=trainer)
    return tok


class HFTokenizer:
    """A `tokenizers` Tokenizer: ours (bpe, trained on the training split) or a pretrained one (a tokenizer.json
    file, or a hub name when online). Each document is followed by the end-of-text token."""

    def __init__(self, tok, name: str, key: str, path: Path | None = None):
        self.tok, self.name, self.key, self.path = tok, name, key, path
        self.tok.encode_special_tokens = True  # a literal "<|endoftext|>" in a document is text, not EOT
        self.vocab_size = self.tok.get_vocab_size()
        self.eot = next((self.tok.token_to_id(t) for t in EOS_TOKENS if self.tok.token_to_id(t) is not None), None)
        if self.eot is None:
            raise ConfigError(f"data.tokenizer_name: the tokenizer has no end-of-text token (one of "
                              f"{', '.join(EOS_TOKENS)}) to separate documents with")

    @classmethod
    def bpe(cls, train_docs: Callable[[], Iterator[str]], vocab_size: int, cache_dir: Path, corpus_key: str):
        """Trained on the training split once per corpus and vocabulary size, cached as tokenizer.json."""
        import tokenizers
        from tokenizers import Tokenizer

        key = _digest(corpus_key, f"bpe:{vocab_size}:v{TOKENIZER_VERSION}:tokenizers-{tokenizers.__version__}")
        path = cache_dir / "bpe" / f"{key[:32]}.json"
        if path.is_file():
            tok = Tokenizer.from_file(str(path))
        else:
            tok = train_bpe(train_docs(), vocab_size)
            _atomic_save(path, lambda p: tok.save(str(p)))
        return cls(tok, "bpe", key, path)

    @classmethod
    def pretrained(cls, name: str | None):
        """A tokenizer.json path, else a hub tokenizer name (e.g. gpt2; needs the network once)."""
        from tokenizers import Tokenizer

        if not name:
            raise ConfigError("data.tokenizer_name: pretrained needs a tokenizer.json path or a hub name (e.g. gpt2)")
        p = Path(name).expanduser()
        try:
            if p.is_file():
                return cls(Tokenizer.from_file(str(p)), "pretrained", _digest(p.read_bytes()), p)
            return cls(Tokenizer.from_pretrained(name), "pretrained", _digest(f"hub:{name}"))
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"data.tokenizer_name: {name!r} is neither a tokenizer.json file nor a tokenizer on "
                              f"the hub ({type(e).__name__}: {e})") from None

    def encode_each(self, docs: list[str]) -> list[np.ndarray]:
        dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32
        return [np.asarray([*enc.ids, self.eot], dtype)
                for enc in self.tok.encode_batch(docs, add_special_tokens=False)]

    def encode(self, docs: list[str]) -> np.ndarray:
        parts = self.encode_each(docs)
        return np.concatenate(parts) if parts else np.zeros(0, np.uint16)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def token_bytes_V(self) -> np.ndarray:
        """Bytes each token stands for (ByteLevel maps a byte to a char); EOT counts 1, like the NUL byte."""
        n_V = np.ones(self.vocab_size, np.int64)
        for token, i in self.tok.get_vocab().items():
            n_V[i] = 1 if i == self.eot else len(token)
        return n_V
