from __future__ import annotations

import math

import numpy as np
import pytest

from testbed import schedules as S
from testbed.config import OptimConfig


def f(sched, step):
    return float(sched(step))


def test_constant_with_warmup():
    s = S.constant(100, warmup_steps=10)
    assert f(s, 0) == pytest.approx(0.1)
    assert f(s, 4) == pytest.approx(0.5)
    assert f(s, 9) == pytest.approx(1.0)
    assert f(s, 50) == f(s, 99) == 1.0


def test_cosine_endpoints_and_midpoint():
    s = S.cosine(101, warmup_steps=0, final_frac=0.1)
    assert f(s, 0) == pytest.approx(1.0)
    assert f(s, 50) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)  # half way: cos(pi/2) = 0
    assert f(s, 100) == pytest.approx(0.1, abs=1e-6)
    w = S.cosine(110, warmup_steps=10, final_frac=0.0)
    assert f(w, 9) == pytest.approx(1.0) and f(w, 10) == pytest.approx(1.0)
    assert f(w, 109) == pytest.approx(0.0, abs=1e-6)
    assert f(w, 10 + 99 * 0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)), abs=1e-5)


def test_linear_and_inverse_sqrt():
    s = S.linear(11, final_frac=0.0)
    assert [round(f(s, i), 6) for i in (0, 5, 10)] == [1.0, 0.5, 0.0]
    r = S.inverse_sqrt(1000, warmup_steps=100)
    assert f(r, 99) == pytest.approx(1.0)
    assert f(r, 399) == pytest.approx(0.5)  # sqrt(100 / 400)
    assert f(r, 49) == pytest.approx(0.5)  # warmup


@pytest.mark.parametrize("shape, mid", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_wsd_cooldown_shapes(shape, mid):
    # 100 steps, last 21 cool down: hold until step 78, cooldown steps 79..99 (t = 0 .. 1 in 20 intervals)
    s = S.wsd(100, warmup_steps=5, cooldown_frac=0.21, final_frac=0.0, shape=shape)
    assert f(s, 0) == pytest.approx(0.2)
    assert f(s, 50) == 1.0 and f(s, 78) == 1.0
    assert f(s, 79) == pytest.approx(1.0)
    assert f(s, 89) == pytest.approx(mid, abs=1e-6)
    assert f(s, 99) == pytest.approx(0.0, abs=1e-6)
    vals = np.array([f(s, i) for i in range(79, 100)])
    assert np.all(np.diff(vals) < 0)


def test_wsd_final_fraction():
    s = S.wsd(100, cooldown_frac=0.2, final_frac=0.1, shape="1-sqrt")
    assert f(s, 99) == pytest.approx(0.1, abs=1e-6)


def test_from_config_dispatch():
    for name in ("constant", "cosine", "linear", "inverse_sqrt", "wsd"):
        s = S.from_config(OptimConfig(schedule=name, warmup_steps=3), 50)
        assert f(s, 0) == pytest.approx(1 / 3)
