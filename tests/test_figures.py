"""Publication figures (analysis/figures.py): file formats, and the values the figures draw (envelope, bootstrap band,
landscape cells and best runs, over-training curves), plus `testbed fit overtrain|steplaw --plot` end to end."""

from __future__ import annotations

import json
import struct
import sys
import xml.etree.ElementTree as ET

import matplotlib
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from testbed.analysis import figures as G
from testbed.analysis import fit as F
from testbed.analysis import hplaws as H
from testbed.analysis import laws

from testbed.config import ConfigError

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
STEP = {"a": 1.79, "alpha": -0.713, "beta": 0.307, "c": 0.58, "gamma": 0.571}
OVER = {"E": 1.8, "a": 200.0, "b": 350.0, "eta": 0.14}


def chinchilla(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


@pytest.fixture(scope="module")
def fitted():
    """20 runs (5 sizes x 4 token counts) from TRUE with 0.3% noise, and the Chinchilla fit with 20 resamples."""
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(5e7, 2e9, 5), np.geomspace(1e9, 5e10, 4)))
    y = chinchilla(N, D) * np.exp(0.003 * np.random.default_rng(0).standard_normal(N.shape))
    return pd.DataFrame({"N": N, "D": D, "loss": y}), F.fit(laws.CHINCHILLA, np.stack([N, D], 1), y, bootstrap=20)


def png_shape(path) -> tuple[int, int]:
    """(width, height) in pixels of a real PNG that is not blank."""
    b = path.read_bytes()
    assert b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) > 15_000, (path, len(b))
    assert matplotlib.image.imread(path)[..., :3].std() > 0.05  # something drawn, not a blank canvas
    return struct.unpack(">II", b[16:24])


def svg_text(path) -> str:
    """All text of an SVG (figures keep text as <text>, svg.fonttype none), after parsing it as XML."""
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return " ".join("".join(el.itertext()) for el in root.iter() if el.tag.endswith("text"))


def test_formats_parent_dirs_style_restored_and_no_pyplot(tmp_path, fitted):
    rows, res = fitted
    had_pyplot, font = "matplotlib.pyplot" in sys.modules, matplotlib.rcParams["font.size"]
    png = G.loss_vs_compute(rows, res, tmp_path / "a" / "b" / "lc.png")
    assert png == tmp_path / "a" / "b" / "lc.png" and png_shape(png) == (round(5.8 * 150), round(4.0 * 150))
    text = svg_text(G.loss_vs_compute(rows, res, tmp_path / "lc.svg"))
    assert "N (parameters)" in text and "95% bootstrap band" in text and "extrapolation" in text
    assert "compute C = 6ND (FLOPs)" in text and "loss (nats/token)" in text
    pdf = G.loss_vs_compute(rows, res, tmp_path / "lc.pdf").read_bytes()
    assert pdf[:5] == b"%PDF-" and len(pdf) > 5_000
    with pytest.raises(ConfigError, match="unknown figure format"):
        G.loss_vs_compute(rows, res, tmp_path / "lc.jpeg")
    assert matplotlib.rcParams["font.size"] == font  # STYLE applied in an rc_context only
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_bootstrap_band_contains_the_point_estimate_and_widens_when_extrapolating(fitted):
    rows, res = fitted
    C6 = 6 * rows["N"] * rows["D"]
    C = np.geomspace(C6.min() / 3, C6.max() * 100, 60)
    lo, hi = G._band(res, C)
    point = laws.chinchilla_optimum(res.params, C)["loss"]
    assert np.all(lo <= point) and np.all(point <= hi) and np.all(lo < hi)
    width = (hi - lo) / point
    assert width[-1] > 2 * width[np.searchsorted(C, C6.median())]  # 100x past the data the law is less certain
    # the band comes from the resampled params: the bootstrap's own percentiles at one C
    Lb = laws.chinchilla_optimum({k: res.boot[k] for k in TRUE}, C[-1])["loss"]
    assert (lo[-1], hi[-1]) == pytest.approx(tuple(np.percentile(Lb, [2.5, 97.5])))
    no_boot = F.FitResult(res.law, res.raw, res.params, res.derived, res.diagnostics, res.n_points)
    assert G._band(no_boot, C) is None


def curves_table() -> pd.DataFrame:
    """4 ok runs (loss along L(N, tokens), eval every 10 steps on two of them, one with a loss spike) and a diverged
    run with a tiny loss that must not count."""
    rows = []
    for i, N in enumerate((3e7, 1e8, 3e8, 1e9)):
        for s in range(1, 201):
            t = s * 1e6 * (N / 3e7) ** 0.5
            loss = chinchilla(N, t) * (1.3 if (i == 1 and 120 <= s < 130) else 1.0)
            ev = chinchilla(N, t) if (i % 2 == 0 and s % 10 == 0) else np.nan
            rows.append({"run_id": f"r{i}", "N": N, "step": s, "tokens": t, "flops": 6 * N * t,
                         "train_loss": loss * 1.01, "eval_loss": ev, "ok": True})
    rows += [{"run_id": "div", "N": 1e8, "step": s, "tokens": s * 1e6, "flops": 6e14 * s, "train_loss": 0.1,
              "eval_loss": np.nan, "ok": False} for s in range(1, 50)]
    return pd.DataFrame(rows)


def test_envelope_is_monotone_and_never_above_any_curve(tmp_path):
    cur = curves_table()
    pts = G._curve_points(cur)
    assert set(pts["run_id"]) == {"r0", "r1", "r2", "r3"}  # the diverged run is left out
    per_run = pts.groupby("run_id").size()
    assert per_run["r0"] == per_run["r2"] == 20 and per_run["r1"] == per_run["r3"] == 200  # eval where logged
    r0 = pts[pts["run_id"] == "r0"]
    np.testing.assert_allclose(r0["loss"], chinchilla(r0["N"], r0["tokens"]))  # eval, not train (1% higher)
    C, L = G._envelope(pts)
    assert np.all(np.diff(C) > 0) and np.all(np.diff(L) <= 0)
    at = np.interp(np.log(pts["flops"]), np.log(C), L)
    assert np.all(at <= pts["loss"].to_numpy() * (1 + 1e-12))
    # it touches the curves: at every logged compute it is the lowest loss reached so far
    best_so_far = pts.sort_values("flops")["loss"].cummin().to_numpy()
    assert np.all(L[np.searchsorted(C, pts.sort_values("flops")["flops"])] <= best_so_far + 1e-12)
    assert L[-1] == pytest.approx(pts.loc[pts["flops"].idxmax(), "loss"])
    w, h = png_shape(G.loss_curves(cur, tmp_path / "curves.png"))
    assert (w, h) == (1500, round(3.9 * 150))
    text = svg_text(G.loss_curves(cur, tmp_path / "curves.svg"))
    assert "compute-optimal frontier" in text and "tokens seen D" in text and "N (parameters)" in text


def test_chinchilla_contour_with_and_without_runs(tmp_path, fitted):
    rows, res = fitted
    png_shape(G.chinchilla_contour(res.params, tmp_path / "c.png", rows=rows))
    text = svg_text(G.chinchilla_contour(res.params, tmp_path / "c.svg", c_range=(1e19, 1e23)))
    assert f"C^{res.derived['a']:.3f}" in text and "runs" not in text and "predicted loss" in text
    with pytest.raises(ConfigError, match="Chinchilla parameters"):
        G.chinchilla_contour({"E": 1.0}, tmp_path / "bad.png")


def steplaw_table(seed=0) -> pd.DataFrame:
    """3 x 3 (N, D) cells of 9 lr x 7 B runs, loss a bowl around STEP's optimum (on the grid), one 5-run cell."""
    rng = np.random.default_rng(seed)
    rows = []
    for N in (2e8, 5e8, 1.2e9):
        for D in (5e9, 2e10, 8e10):
            lr0, B0 = H.predict(STEP, N, D)
            for dl in np.linspace(-1.2, 1.2, 9):
                for db in np.linspace(-1.2, 1.2, 7):
                    loss = 2.5 * (1 + 0.01 * ((dl / 0.5) ** 2 + (db / 0.5) ** 2)) + 1e-6 * rng.standard_normal()
                    rows.append({"N": N, "D": D, "lr": lr0 * np.exp(dl), "B": B0 * np.exp(db), "loss": loss})
    rows += [{"N": 8e8, "D": 3e10, "lr": 1e-3 * k, "B": 1e6, "loss": 2.6 + 0.01 * k} for k in range(1, 6)]
    return pd.DataFrame(rows)


def test_landscape_cells_best_run_band_and_tiles(tmp_path):
    t = steplaw_table()
    cells = G._select_cells(t, max_cells=4)
    # one cell per swept N first (spread: 4 values, 4 cells), the best-covered; the 5-run cell's N is kept too
    assert len(cells) == 4 and sorted(cells["N"]) == [2e8, 5e8, 8e8, 1.2e9]
    assert list(cells.loc[cells["N"] != 8e8, "runs"]) == [63, 63, 63]
    cells = G._select_cells(t, max_cells=6)
    assert len(cells) == 6 and cells["N"].value_counts().max() == 2 and cells["N"].is_monotonic_increasing
    assert len(G._select_cells(t, max_cells=2)) == 2 and set(G._select_cells(t, 2)["N"]) == {2e8, 1.2e9}
    for N, D in ((2e8, 5e9), (1.2e9, 8e10)):
        g = t[(t["N"] == N) & (t["D"] == D)]
        v = G._cell_view(g, band=0.0025)
        best = g.loc[g["loss"].idxmin()]
        assert v["best"] == pytest.approx((np.log2(best["lr"]), np.log2(best["B"])))
        lr0, B0 = H.predict(STEP, N, D)
        assert v["best"] == pytest.approx((np.log2(lr0), np.log2(B0)))  # the bowl's centre
        rel = np.sort(g["loss"].to_numpy() / g["loss"].min() - 1)[::-1]  # worst first, as drawn
        np.testing.assert_array_equal(v["near"], rel < 0.0025)
        assert v["rel"].min() == 0 and v["rel"].max() == G.LANDSCAPE_CLIP
        (x0, x1), (y0, y1) = v["xt"], v["yt"]
        assert np.all((x0 < v["x"]) & (v["x"] < x1) & (y0 < v["y"]) & (v["y"] < y1))
        ux = np.unique(np.c_[x0, x1], axis=0)  # tiles of neighbouring lr values meet exactly: no overlap, no gap
        np.testing.assert_allclose(ux[1:, 0], ux[:-1, 1])
    params = H.fit_steplaw(t.rename(columns={"B": "bs"}))["params"]
    png_shape(G.lr_landscape(t, tmp_path / "ls.png", params=params))
    text = svg_text(G.lr_landscape(t, tmp_path / "ls.svg", params=params, max_cells=2))
    assert "Step Law fit optimum" in text and "N=200M, D=80B (63 runs)" in text and "log2 learning rate" in text
    assert "Step Law fit" not in svg_text(G.lr_landscape(t.rename(columns={"B": "bs"}), tmp_path / "n.svg"))


def test_holdout_scatter_title_is_the_mean_abs_rel_error(tmp_path, fitted):
    rows, res = fitted
    pred = res.predict(rows[["N", "D"]].to_numpy())
    pts = [{"N": n, "D": d, "loss": o, "pred": p, "rel_error": (p - o) / o}
           for n, d, o, p in zip(rows["N"], rows["D"], rows["loss"], pred, strict=True)]
    held = pts[15:]
    mean = np.mean([abs(p["rel_error"]) for p in held])
    text = svg_text(G.holdout_scatter(pts[:15], held, tmp_path / "h.svg", title="chinchilla"))
    assert f"chinchilla: held-out mean |rel error| {mean:.2%}" in text
    assert "fitted (15)" in text and "held out (5)" in text and f"{held[0]['rel_error']:+.2%}" in text
    no_rel = [{k: v for k, v in p.items() if k != "rel_error"} for p in held]  # rel error from pred and loss
    assert f"{mean:.2%}" in svg_text(G.holdout_scatter(None, no_rel, tmp_path / "h2.svg"))
    png_shape(G.holdout_scatter(None, held, tmp_path / "h.png"))


def overtrain_table() -> pd.DataFrame:
    N, M = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1.5e9, 5), [5.0, 20.0, 80.0, 320.0]))
    D = M * N * (1 + 1e-4 * (np.arange(N.size) % 3))  # M slightly off its nominal value, as with real step counts
    C = 6 * N * D
    loss = OVER["E"] + (OVER["a"] * (D / N) ** OVER["eta"] + OVER["b"] * (D / N) ** -OVER["eta"]) * C ** -OVER["eta"]
    return pd.DataFrame({"N": N, "D": D, "loss": loss})


def test_overtrain_and_downstream_figures(tmp_path):
    rows = overtrain_table()
    assert sorted(set(G._multipliers(rows))) == [5.0, 20.0, 80.0, 320.0]
    assert list(G._multipliers(pd.DataFrame({"M": [19.96, 2.571, 640.4]}))) == pytest.approx([20.0, 2.6, 640.0])
    C, M = np.geomspace(1e16, 1e22, 7), 37.0
    want = OVER["E"] + (OVER["a"] * M ** OVER["eta"] + OVER["b"] * M ** -OVER["eta"]) * C ** -OVER["eta"]
    np.testing.assert_allclose(G._overtrain_loss(OVER, C, M), want, rtol=1e-12)
    fit_json = {"params": OVER, "derived": {"M_opt": (OVER["b"] / OVER["a"]) ** (1 / (2 * OVER["eta"]))}}
    png_shape(G.overtrain(rows, fit_json, tmp_path / "ot.png"))
    text = svg_text(G.overtrain(rows, fit_json, tmp_path / "ot.svg"))
    assert all(f"M = {m:g}" in text for m in (5, 20, 80, 320)) and "compute-optimal" in text
    L = np.linspace(2.3, 5.5, 12)
    down = {"eps": 0.86, "k": 2.2, "gamma": 0.7}
    table = pd.DataFrame({"loss": L, "err": down["eps"] - down["k"] * np.exp(-down["gamma"] * L)})
    png_shape(G.downstream(table, {"params": down}, tmp_path / "ds.png"))
    text = svg_text(G.downstream(table.assign(N=np.geomspace(1e10, 1e7, 12)), {"params": down}, tmp_path / "d.svg"))
    assert "ε = 0.86" in text and "Err = 0.86 − 2.2 exp(−0.7 L)" in text and "N (parameters)" in text


def test_cli_fit_overtrain_and_steplaw_plot(tmp_path, cli):
    """`testbed fit overtrain|steplaw CSV --json --plot X.png` draws the over-training and landscape figures."""
    data = tmp_path / "ot.csv"
    overtrain_table().to_csv(data, index=False)
    r = cli("fit", "overtrain", str(data), "--json", "--plot", str(tmp_path / "ot.png"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["law"] == "overtrain" and out["plot"] == str(tmp_path / "ot.png")
    assert out["params"]["eta"] == pytest.approx(OVER["eta"], abs=0.01)
    assert png_shape(tmp_path / "ot.png") == (round(5.8 * 150), round(4.1 * 150))
    hp = tmp_path / "hp.csv"
    t = steplaw_table()
    t[t["N"] != 8e8].rename(columns={"B": "bs"}).to_csv(hp, index=False)
    r = cli("fit", "steplaw", str(hp), "--json", "--plot", str(tmp_path / "figs" / "ls.svg"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["params"]["gamma"] == pytest.approx(STEP["gamma"], abs=0.02)
    assert "Step Law fit optimum" in svg_text(tmp_path / "figs" / "ls.svg")
