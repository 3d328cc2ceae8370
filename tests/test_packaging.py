from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import ROOT


def test_wheel_maps_launch_and_analysis_under_the_testbed_namespace(tmp_path):
    """An installed (non-editable) wheel carries testbed.launch / testbed.analysis, no top-level names."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        str(ROOT), "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("scaling_testbed-*.whl")  # the distribution's name; "testbed" on PyPI is another
    names = zipfile.ZipFile(wheel).namelist()
    for mod in ("testbed/launch/__init__.py", "testbed/analysis/__init__.py", "testbed/data/synthetic.py",
                "testbed/data/text.py", "testbed/launch/cli/__init__.py"):
        assert mod in names, mod
    assert not any(n.startswith(("launch/", "analysis/", "tests/")) for n in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = (f"import sys; sys.path.insert(0, {str(target)!r}); import testbed.launch, testbed.analysis; "
            f"assert testbed.launch.__file__.startswith({str(target)!r})")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # installed by pip into a fresh venv (its dependencies borrowed from this interpreter's site-packages, so no
    # download): the distribution is scaling-testbed, the command and the import package are testbed
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                          text=True, check=True).stdout.strip()
    import sysconfig

    ours = sysconfig.get_paths()["purelib"]
    (Path(site) / "deps.pth").write_text(ours + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                        "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import importlib.metadata as m, testbed; print(m.version('scaling-testbed')); print(testbed.__file__)")
    r = subprocess.run([str(py), "-I", "-c", code], capture_output=True, text=True)
    version, where = r.stdout.split()
    assert r.returncode == 0 and version == "0.1.0" and where.startswith(site), (r.stdout, r.stderr)
    r = subprocess.run([str(venv / "bin" / "testbed"), "config", "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and "optim.lr" in r.stdout, r.stderr[-2000:]
