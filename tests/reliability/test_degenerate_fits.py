"""Fits refuse degenerate data with a clear error (exit 2) instead of returning nonsense: `testbed fit chinchilla |
isoflop | farseer` on CSVs whose points cannot identify the law. Before this suite, constant losses crashed
chinchilla and farseer with an OverflowError traceback, and D a fixed multiple of N (one tokens-per-parameter
ratio) or constant losses under isoflop returned parameters as if fitted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from testbed.launch import cli as CLI

N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e9, 5), np.geomspace(1e9, 1e11, 5)))


def law(n, d):
    return 1.8 + 400 / n ** 0.34 + 2000 / d ** 0.37


DATA = {
    "constant-N": lambda: {"N": np.full(25, 1e8), "D": D, "loss": law(1e8, D)},
    "too-few-points": lambda: {"N": N[:4], "D": D[:4], "loss": law(N[:4], D[:4])},
    "all-losses-NaN": lambda: {"N": N, "D": D, "loss": np.full(25, np.nan)},
    "zero-losses": lambda: {"N": N, "D": D, "loss": np.zeros(25)},
    "constant-loss": lambda: {"N": N, "D": D, "loss": np.full(25, 3.0)},
    "D-fixed-multiple-of-N": lambda: {"N": N, "D": 20 * N, "loss": law(N, 20 * N)},
}
# law -> data -> what the error must say
EXPECT = {
    "chinchilla": {"constant-N": "column N is constant", "too-few-points": "4 usable points",
                   "all-losses-NaN": "excluded 25 runs: 25 nonfinite", "zero-losses": "excluded 25 runs: 25 nonfinite",
                   "constant-loss": "every loss is 3", "D-fixed-multiple-of-N": "cannot be told apart"},
    "farseer": {"constant-N": "column N is constant", "too-few-points": "needs at least 12",
                "all-losses-NaN": "excluded 25 runs: 25 nonfinite", "zero-losses": "excluded 25 runs: 25 nonfinite",
                "constant-loss": "every loss is 3", "D-fixed-multiple-of-N": "cannot be told apart"},
    "isoflop": {"constant-N": "1 distinct N; a parabola needs 3", "too-few-points": "need at least 2",
                "all-losses-NaN": "excluded 25 runs: 25 nonfinite", "zero-losses": "excluded 25 runs: 25 nonfinite",
                "constant-loss": "every loss is equal: no minimum", "D-fixed-multiple-of-N": "1 distinct N"},
}


@pytest.mark.parametrize("law_name", list(EXPECT))
@pytest.mark.parametrize("data", list(DATA))
def test_degenerate_points_are_refused_with_the_reason(law_name, data, tmp_path, capsys):
    path = tmp_path / "points.csv"
    pd.DataFrame(DATA[data]()).to_csv(path, index=False)
    rc = CLI.main(["fit", law_name, str(path), "--json", "--plot", str(tmp_path / "fig.png")])
    cap = capsys.readouterr()
    assert rc == 2, (law_name, data, cap.out[:500])
    assert cap.err.startswith("testbed fit: error: ") and EXPECT[law_name][data] in cap.err, cap.err
    assert cap.out == "" and not (tmp_path / "fig.png").exists()


def test_isoflop_says_which_rows_it_left_out(tmp_path, capsys):
    """A row with no usable N no longer vanishes silently from an IsoFLOP fit: it is counted and warned about."""
    rows = []
    for c in (1e18, 1e19, 1e20):
        for n in 0.09 * (c / 6) ** 0.52 * np.geomspace(0.25, 4, 7):
            rows.append({"C": c, "N": n, "D": c / (6 * n), "loss": law(n, c / (6 * n))})
    df = pd.DataFrame(rows)
    df.loc[3, "N"] = np.nan
    path = tmp_path / "iso.csv"
    df.to_csv(path, index=False)
    assert CLI.main(["fit", "isoflop", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["diagnostics"]
    assert d["rows_nonfinite_or_nonpositive"] == 1 and "1 rows with a non-finite or non-positive N" in d["warning"]
