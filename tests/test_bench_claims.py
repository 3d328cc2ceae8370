"""bench/claims.py: the ledger's bench checks are found, run, and reported as held / not held / not measurable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import claims  # noqa: E402  (bench/claims.py)


def test_every_ledger_check_names_a_bench_script_that_has_a_check_flag():
    rows = claims.ledger_rows()
    commands = {r["command"] for r in rows}
    assert len(rows) >= 10 and len(commands) >= 6
    for cmd in commands:
        script = ROOT / cmd.split()[1]
        assert script.is_file(), cmd
        assert '"--check"' in script.read_text(), f"{script.name} has no --check"


def fake_script(tmp_path: Path, code: int, line: str) -> str:
    path = tmp_path / f"fake_{code}.py"
    path.write_text(f"import sys\nprint('other output')\nprint({line!r})\nsys.exit({code})\n")
    return f"python {path}"


def test_verdicts_follow_the_exit_code_and_name_what_failed(tmp_path):
    bad = '{"check": [{"claim": "ratio", "value": 2.0, "band": [0, 1], "held": false}], "held": false}'
    r = claims.run_check(fake_script(tmp_path, 1, bad), None, "runs", 60)
    assert r["verdict"] == "not held" and "ratio = 2 (band 0..1)" in r["why"]
    good = '{"check": [{"claim": "ratio", "value": 0.5, "band": [0, 1], "held": true}], "held": true}'
    assert claims.run_check(fake_script(tmp_path, 0, good), None, "runs", 60)["verdict"] == "held"
    absent = '{"check": [], "held": null, "not_measurable": "no runs"}'
    r = claims.run_check(fake_script(tmp_path, 3, absent), None, "runs", 60)
    assert r == {**r, "verdict": "not measurable here", "why": "no runs"}
    r = claims.run_check(fake_script(tmp_path, 2, "{}"), None, "runs", 60)  # a crash is not a pass
    assert r["verdict"] == "not held" and "exit 2" in r["why"]
    r = claims.run_check(fake_script(tmp_path, 1, "{}"), None, "runs", 60)  # exit 1 without a verdict: a crash
    assert r["verdict"] == "not held" and "exit 1" in r["why"]
    r = claims.run_check("python bench/laws_published.py --data DATA --check", None, "runs", 60)
    assert r["verdict"] == "not measurable here" and "--data" in r["why"]


def test_a_check_whose_runs_are_absent_is_not_measurable_not_failed(tmp_path):
    p = subprocess.run([sys.executable, "bench/claims.py", "--only", "curve_laws", "--runs", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = [x for x in p.stdout.splitlines() if "curve_laws" in x]
    assert len(lines) == 4 and all(x.startswith("not measurable here") for x in lines), lines
    assert '"not_held": 0' in p.stdout and "skipped" in p.stdout  # the other commands did not run


TEST_REF = re.compile(r"\btests/([\w/]+\.py)::(\w+)")  # a [param] suffix is not part of the name
TEST_FILE = re.compile(r"\btests/([\w/]+\.py)\b")
BENCH_SCRIPT = re.compile(r"\bbench/([a-z_][a-z0-9_]*)\.py\b")  # lower case: bench/SCRIPT.py is a placeholder


def missing_references(text: str) -> list[str]:
    """The tests/FILE.py::NAME, tests/FILE.py and bench/NAME.py in a ledger text that do not exist in the repo."""
    missing = []
    for path, name in sorted(set(TEST_REF.findall(text))):
        file = ROOT / "tests" / path
        if not file.is_file() or not re.search(rf"^\s*(?:async\s+)?def {name}\(", file.read_text(), re.M):
            missing.append(f"tests/{path}::{name}")
    missing += [f"tests/{p}" for p in sorted(set(TEST_FILE.findall(text))) if not (ROOT / "tests" / p).is_file()]
    missing += [f"bench/{n}.py" for n in sorted(set(BENCH_SCRIPT.findall(text)))
                if not (ROOT / "bench" / f"{n}.py").is_file()]
    return missing


def test_every_test_and_bench_script_the_ledger_names_exists():
    text = claims.LEDGER.read_text()
    assert len(set(TEST_REF.findall(text))) >= 20 and len(set(BENCH_SCRIPT.findall(text))) >= 10
    assert missing_references(text) == []
    made_up = ("tests/test_fit.py::test_no_such_test[x] tests/test_no_such_file.py::test_x bench/no_such_script.py "
               "tests/test_fit.py::test_epoch_chinchilla_approach3_reproduces_the_published_fit")
    assert missing_references(made_up) == ["tests/test_fit.py::test_no_such_test", "tests/test_no_such_file.py::test_x",
                                           "tests/test_no_such_file.py", "bench/no_such_script.py"]
