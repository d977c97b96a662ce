"""`pip install .` must not put bare generic names (kernels, cli) into site-packages."""
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = (".py", ".cu", ".html", ".js", ".css")     # code, CUDA sources, the explorer's page


def test_wheel_maps_kernels_and_cli_under_the_package(tmp_path):
    pytest.importorskip("setuptools")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), ROOT], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"could not build a wheel here: {r.stderr.strip().splitlines()[-1:]}")
    (whl,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / whl).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"lstm_engine"}, tops
    assert "lstm_engine/cli.py" in names and "lstm_engine/kernels/__init__.py" in names
    assert "lstm_engine/corpora_data/registry.json" in names          # the corpus registry as package data
    entry = zipfile.ZipFile(tmp_path / whl).read(
        [n for n in names if n.endswith("entry_points.txt")][0]).decode()
    assert "lstm-engine = lstm_engine.cli:main" in entry
    assert sorted(_sources()) == sorted(n for n in names if n.endswith(SOURCES))


def _sources():
    """The wheel paths every source file of the checkout must have (a subpackage missing from setup.cfg
    would silently drop out of the wheel)."""
    out = []
    for top, installed in (("lstm_engine", "lstm_engine"), ("kernels", "lstm_engine/kernels"),
                           ("corpora", "lstm_engine/corpora_data")):
        for d, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            rel = os.path.relpath(d, os.path.join(ROOT, top))
            for f in files:
                if f.endswith(SOURCES):
                    out.append(os.path.normpath(os.path.join(installed, rel, f)))
    return out
