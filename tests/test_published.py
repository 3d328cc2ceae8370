"""`testbed datasets`: the published sets the docs use, their checksums against the copies the tests read, and a
download that checks each file and writes it atomically (served here from those copies: no network)."""

from __future__ import annotations

import io
import json
import urllib.error

import pytest

from testbed.config import ConfigError
from testbed.data import published

from .conftest import SHARED_DATA

# where each downloadable file's verbatim copy sits in the published data the tests read
COPIES = {"svg_extracted_data.csv": "epoch_chinchilla/svg_extracted_data.csv",
          "isoflops_points.csv": "llama3_isoflops/isoflops_points.csv",
          "isoflops.csv": "open_athena_isoflops/isoflops_extract_all.csv",
          "isoflop-nemotron.csv": "open_athena_isoflops/marin_202603_raw_isoflop-nemotron.csv",
          "isoflop-comma.csv": "open_athena_isoflops/marin_202603_raw_isoflop-comma.csv",
          "isoflop-dclm.csv": "open_athena_isoflops/marin_202603_raw_isoflop-dclm.csv",
          "dense_lr_bs_loss.csv": "steplaw/dense_lr_bs_loss.csv", "moe_lr_bs_loss.csv": "steplaw/moe_lr_bs_loss.csv",
          "1004_fitted_lr_bs_scaling_model_parameters.csv": "steplaw/1004_fitted_lr_bs_scaling_model_parameters.csv",
          "scaling_results.csv": "misfitting_li2025/scaling_results.csv",
          "scaling_results_last_ckpt_only.csv": "misfitting_li2025/scaling_results_last_ckpt_only.csv",
          "data.csv": "sldbench_secondary/data_constrained_muennighoff.csv"}


def serve(by_url: dict[str, bytes]):
    def opener(url, timeout):
        if url not in by_url:
            raise urllib.error.URLError("Name or service not known")
        return io.BytesIO(by_url[url])
    return opener


def test_every_listed_file_matches_the_published_copy_byte_for_byte():
    rows = published.listing()
    assert {r["name"] for r in rows} >= {"epoch-chinchilla", "llama3-isoflops", "steplaw", "open-athena-isoflops"}
    for r in rows:
        assert r["source"].startswith("github.com/") and r["licence"] and r["paper"]
        assert r["files"] or r["fetch"]
        for f in r["files"]:
            assert f["url"].startswith("https://raw.githubusercontent.com/") and len(f["sha256"]) == 64
            copy = SHARED_DATA / COPIES[f["name"]]
            data = copy.read_bytes()
            assert len(data) == f["bytes"] and published._sha256(data) == f["sha256"], f["name"]


def test_get_checks_every_file_writes_it_atomically_and_says_where_when_offline(tmp_path):
    d = published.BY_NAME["steplaw"]
    files = {d.url(f): (SHARED_DATA / COPIES[f.name]).read_bytes() for f in d.files}
    paths = published.get("steplaw", tmp_path, opener=serve(files))
    assert [p.name for p in paths] == [f.name for f in d.files]
    assert all(p.read_bytes() == files[d.url(f)] for p, f in zip(paths, d.files, strict=True))
    assert not list((tmp_path / "steplaw").glob(".*tmp*"))
    # already there and right: kept without a download
    assert published.get("steplaw", tmp_path, opener=serve({})) == paths
    # a file that is not what the authors published is refused, and nothing is written for it
    e = published.BY_NAME["epoch-chinchilla"]
    (url,) = [e.url(f) for f in e.files]
    bad = bytearray((SHARED_DATA / COPIES["svg_extracted_data.csv"]).read_bytes())
    bad[100] ^= 1
    with pytest.raises(published.DownloadError, match="sha256"):
        published.get("epoch-chinchilla", tmp_path, opener=serve({url: bytes(bad)}))
    assert not (tmp_path / "epoch-chinchilla" / "svg_extracted_data.csv").exists()
    with pytest.raises(published.DownloadError, match="could not download https://raw.githubusercontent.com/"):
        published.get("epoch-chinchilla", tmp_path, opener=serve({}))
    with pytest.raises(ConfigError, match="unknown dataset"):
        published.get("nope", tmp_path)
    with pytest.raises(ConfigError, match="git clone"):
        published.get("gadre-overtrain", tmp_path)


def test_cli_lists_and_refuses_an_unknown_name(cli, tmp_path):
    r = cli("datasets", "--json")
    assert r.returncode == 0 and {row["name"] for row in json.loads(r.stdout)} == set(published.BY_NAME)
    r = cli("datasets", "get", "nope", "--out", str(tmp_path))
    assert r.returncode == 2 and "unknown dataset" in r.stderr
