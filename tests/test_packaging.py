from __future__ import annotations

import subprocess
import sys
import zipfile

from .conftest import ROOT


def test_wheel_maps_launch_and_analysis_under_the_testbed_namespace(tmp_path):
    """An installed (non-editable) wheel carries testbed.launch / testbed.analysis, no top-level names."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        str(ROOT), "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("testbed-*.whl")
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
