"""Published scaling measurements the docs reproduce: where each comes from, its licence, and a checked download.

`testbed datasets` lists them; `testbed datasets get NAME` downloads the files of one into data/NAME/ from the
authors' repositories at the commit the docs used, checks each file's sha256 and writes it atomically. Offline it
says so and prints the URLs. Nothing here is bundled: the files stay their authors'. Sets that are directories of
many files, or pickles we flattened, are listed with the command that fetches them instead (`get` is refused).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from testbed.config import ConfigError

RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"


@dataclass(frozen=True)
class File:
    path: str  # inside the repository
    sha256: str
    bytes: int

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class Dataset:
    name: str
    what: str
    paper: str
    repo: str
    commit: str
    licence: str
    files: tuple[File, ...] = field(default_factory=tuple)
    fetch_note: str = ""  # when there are no single files to get: how to obtain the data

    def url(self, f: File) -> str:
        return RAW.format(repo=self.repo, commit=self.commit, path=f.path)


DATASETS = (
    Dataset("epoch-chinchilla", "Chinchilla's 245 (N, D, loss) points, extracted from the paper's figure 4",
            "Besiroglu et al. 2024, Chinchilla Scaling: A replication attempt (arXiv:2404.10102)",
            "epoch-research/analyzing-chinchilla", "9225883", "none stated in the repository",
            (File("data/svg_extracted_data.csv", "193478df4e90f040016431996c45682659306840ecdadf83cfb9cd5ca0aa1b30",
                  23224),)),
    Dataset("llama3-isoflops", "Llama 3's isoFLOP curves (133 points), digitised from the paper's figure",
            "Llama 3 Herd of Models (arXiv:2407.21783), figure 2; extraction by E. Czech",
            "eric-czech/llama3_isoflop_extraction", "1bc1755", "none stated (a third-party digitisation)",
            (File("isoflops_points.csv", "5675ea68f14be53bd09bf0d65667c0f25668aa82ecc48020864ae371e7a38a8a",
                  7550),)),
    Dataset("open-athena-isoflops", "isoFLOP points of Llama 3, (Mis)Fitting, Marin and others, one table; "
            "Marin's 2026 raw isoFLOP runs (comma, dclm, nemotron)",
            "Open-Athena, Problems with Chinchilla Approach 2 (arXiv:2603.22339)",
            "Open-Athena/scaling-law-analysis", "3e0656e", "none found at the repository root",
            (File("data/isoflops/extract/isoflops.csv",
                  "cf343ffda3106862e0e73bfc10ed017f683a03e46f4540896a213276fd180651", 115576),
             File("data/isoflops/extract/marin_202603/raw/isoflop-nemotron.csv",
                  "5e615183ba71083721a5bc169adf7c9c997c4820fd69f383f108e0a4ca3ea375", 14398),
             File("data/isoflops/extract/marin_202603/raw/isoflop-comma.csv",
                  "0b352c08b3c96d97ef3d7534becbc0a2918493e6e37961943b022056277e4406", 14293),
             File("data/isoflops/extract/marin_202603/raw/isoflop-dclm.csv",
                  "8a75a0fbc7b34250501de17ab336fdf99d6bee67e44f62b8bed4b81fb9f033af", 13355))),
    Dataset("steplaw", "Step Law's 1,911 dense and 708 MoE (N, D, lr, batch, loss) runs and its 1,000 bootstrap fits",
            "Li et al. 2025, Predictable Scale: Part I (arXiv:2503.04715)", "step-law/steplaw", "32a8f4c",
            "none stated in the repository",
            (File("data/dense_lr_bs_loss.csv", "9e46181076c04d450294d75dfe6f72adc416e231e154a07b337e378f9410002c",
                  344476),
             File("data/moe_lr_bs_loss.csv", "653d585244a7b227423007e8b796bc16d76f6d24eb87b1919b8f048a91897b92",
                  232920),
             File("data/1004_fitted_lr_bs_scaling_model_parameters.csv",
                  "2252afbba5530e6ba6167e8101bd2b9082a018a58cb5922cc8672891a7f4336c", 97581))),
    Dataset("misfitting", "(Mis)Fitting's open_lm runs (11 sizes) with intermediate checkpoints, and final ones only",
            "Li, Kudugunta, Zettlemoyer 2025, (Mis)Fitting Scaling Laws (arXiv:2502.18969)", "hadasah/scaling_laws",
            "1f3708c", "none stated at the repository root",
            (File("data/scaling_results.csv", "193b4b7665365112605417e2ef06d55efe599cfa08412354e3ae42c3af7a9f58",
                  1133268),
             File("data/scaling_results_last_ckpt_only.csv",
                  "cd96b9eb8e5b2adc80e6739a642dd8554590edc96234d36859ab6ed0f5c30562", 58697))),
    Dataset("muennighoff-data-constrained", "182 (N, unique tokens, tokens, loss) runs with repeated data",
            "Muennighoff et al. 2023, Scaling Data-Constrained Language Models; as curated by SLDBench",
            "linhaowei1/SLD", "bf7e8e332a1de86805373d565d460ebd1edfbf87",
            "MIT per the README badge (no LICENSE file); a secondary curation",
            (File("data/data_constrained_scaling_law/data.csv",
                  "b6568b72c0b6e0479ddbebbd3f78fd9b1fc7d12cc465e816876e154d71827428", 10665),)),
    Dataset("gadre-overtrain", "104 over-trained models (N, D, 8 validation losses, 46 downstream accuracies)",
            "Gadre et al. 2024, Language models scale reliably with over-training (arXiv:2403.08540)",
            "mlfoundations/scaling", "a003c49", "MIT (Copyright (c) 2024 mlfoundations)",
            fetch_note="208 JSON files under exp_data/: git clone https://github.com/mlfoundations/scaling && "
                       "git -C scaling checkout a003c49"),
    Dataset("porian-resolving", "Porian et al.'s isoFLOP points, optimal pairs and fits on OpenWebText2 and RefinedWeb",
            "Porian et al. 2024, Resolving Discrepancies in Compute-Optimal Scaling (arXiv:2406.19146)",
            "formll/resolving-scaling-law-discrepancies", "0dc60d9", "MIT text in the repository",
            fetch_note="pandas pickles under data/ (a pickle can run code when loaded: read them only if you trust "
                       "the source): git clone https://github.com/formll/resolving-scaling-law-discrepancies"),
)
BY_NAME = {d.name: d for d in DATASETS}


def listing() -> list[dict]:
    """`testbed datasets`: one row per set, with its files' URLs, sizes and checksums."""
    return [{"name": d.name, "what": d.what, "paper": d.paper, "source": f"github.com/{d.repo} @ {d.commit}",
             "licence": d.licence, "files": [{"name": f.name, "url": d.url(f), "bytes": f.bytes, "sha256": f.sha256}
                                            for f in d.files], **({"fetch": d.fetch_note} if d.fetch_note else {})}
            for d in DATASETS]


def format_listing(rows: list[dict]) -> str:
    out = []
    for r in rows:
        out.append(f"{r['name']}: {r['what']}\n    {r['paper']}\n    source {r['source']}; licence: {r['licence']}")
        out += [f"    {f['name']} ({f['bytes']:,} B, sha256 {f['sha256'][:12]}...)" for f in r["files"]]
        if "fetch" in r:
            out.append(f"    not fetched by `get`: {r['fetch']}")
    return "\n".join(out) + "\n\ntestbed datasets get NAME [--out data]  downloads one into data/NAME/"


class DownloadError(Exception):
    """The network is unreachable or a file is not what it should be (exit 1; the message has the URL)."""


def get(name: str, out: str | Path = "data", opener=urllib.request.urlopen, timeout_s: float = 30.0) -> list[Path]:
    """Downloads every file of `name` into out/name/ (sha256-checked, written atomically); files already there with
    the right checksum are kept. Returns the paths."""
    if name not in BY_NAME:
        raise ConfigError(f"NAME: unknown dataset {name!r}; choose one of {', '.join(BY_NAME)}")
    d = BY_NAME[name]
    if not d.files:
        raise ConfigError(f"{name}: not a set of single files; {d.fetch_note}")
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in d.files:
        dest = folder / f.name
        if dest.is_file() and _sha256(dest.read_bytes()) == f.sha256:
            paths.append(dest)
            continue
        url = d.url(f)
        try:
            with opener(url, timeout=timeout_s) as response:
                data = response.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DownloadError(f"{name}: could not download {url} ({e}); where there is no network, fetch it "
                                f"elsewhere and put it at {dest} (sha256 {f.sha256})") from None
        digest = _sha256(data)
        if digest != f.sha256:
            raise DownloadError(f"{name}: {url} has sha256 {digest}, expected {f.sha256}; nothing was written")
        tmp = dest.with_name(f".{dest.name}.tmp.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        paths.append(dest)
    return paths


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
