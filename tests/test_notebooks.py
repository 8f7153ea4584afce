"""Run each notebook top to bottom with nbclient at tiny settings; check outputs are stripped in git.

Notebooks needing real data skip (same fixtures as the data tests) when it is absent.
Size knobs reach the notebooks as ``NOWCAST_NB_*`` environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebooks extra not installed (pip install 'nowcast-jax[notebooks]')")
nbclient = pytest.importorskip("nbclient", reason="notebooks extra not installed (pip install 'nowcast-jax[notebooks]')")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
TIMEOUT_S = 240  # per cell; each notebook is meant to finish well within ~2 minutes on 2 cores


def run_notebook(name: str, tmp_path: Path, **env) -> nbformat.NotebookNode:
    """Execute ``notebooks/NAME`` in a fresh kernel (cwd = tmp_path); returns the executed notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = dict(os.environ)
    os.environ.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p), "MPLBACKEND": "Agg",
        "NOWCAST_NB_WORKDIR": str(tmp_path / "workdir")})
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs not stripped"


@pytest.mark.slow
def test_functional_api_notebook(tmp_path):
    nb = run_notebook("03_functional_api.ipynb", tmp_path, NOWCAST_NB_STEPS=5)
    text = _text(nb)
    assert "same numbers as rollout.stack_scan" in text
    assert "ensemble forecast (3, 2, 2, 8, 8, 1)" in text
    assert "bf16 ops in the compiled program: True" in text


@pytest.mark.slow
def test_precip_quickstart_notebook(tmp_path, mnist_dir):
    nb = run_notebook("01_precip_quickstart.ipynb", tmp_path, NOWCAST_NB_STEPS=30)
    assert "forecast frames" in _text(nb)


@pytest.mark.slow
def test_visibility_quickstart_notebook(tmp_path, weather_csv):
    nb = run_notebook("02_visibility_quickstart.ipynb", tmp_path, NOWCAST_NB_STEPS=30)
    assert "persistence" in _text(nb)
