"""Library code leaves process-global state alone: no matplotlib backend switch, no pyplot.

(The allocator side of the same rule, "nothing at import", is in tests/engine/test_runtime.py.)
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nowcast_jax"


def _offences(source: str, name: str) -> list[str]:
    """``matplotlib.use(...)`` calls and any use of ``pyplot`` in one module's source."""
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if "pyplot" in a.name]
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if "pyplot" in (node.module or "") or "pyplot" in names or (node.module == "matplotlib" and "use" in names):
                found.append(f"{where} from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Attribute) and node.attr == "pyplot":
            found.append(f"{where} .pyplot")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use"
              and isinstance(node.func.value, ast.Name) and node.func.value.id in ("matplotlib", "mpl")):
            found.append(f"{where} {node.func.value.id}.use(...)")
    return found


def test_package_source_never_switches_backend_or_uses_pyplot():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    offences = [o for f in files for o in _offences(f.read_text(), str(f.relative_to(REPO)))]
    assert offences == [], "library code must draw on matplotlib.figure.Figure, not pyplot:\n" + "\n".join(offences)


def test_the_checker_catches_what_it_should():
    bad = ("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
           "from matplotlib import pyplot\nimport matplotlib as mpl\nmpl.pyplot.close()\n")
    assert len(_offences(bad, "bad.py")) == 4
    assert _offences("from matplotlib.figure import Figure\nFigure().subplots()\n", "good.py") == []


PLOTS = r"""
import sys, types
from pathlib import Path
import matplotlib
matplotlib.use("svg")  # the caller's choice, which a library call must not change
import numpy as np
from nowcast_jax.precip import plots as precip_plots
from nowcast_jax.visibility import plots as vr
out, rng = Path(sys.argv[1]), np.random.default_rng(0)
paths = [precip_plots.plot_radar(rng.gamma(1, 2, (3, 8, 8)), rng.gamma(1, 2, (2, 8, 8)), out / "radar.png", step=5)]
batch = {"inputs": rng.random((1, 2, 8, 8, 1)), "targets": rng.random((1, 2, 8, 8, 1))}
paths.append(precip_plots.plot_strip(batch, {"model": rng.random((1, 2, 8, 8, 1))}, out / "strip.png", rain=False))
n = 48
w = types.SimpleNamespace(times=np.datetime64("2020-01-01T00:00") + np.arange(n) * np.timedelta64(1, "h"),
                          y=rng.uniform(100, 9000, (n, 2)), station=np.array(["A"] * n))
paths.append(vr.plot_event({"model": {"value": rng.uniform(100, 9000, (n, 2))}}, w, [1, 2], 1, out / "event.png"))
res = {"model": {"rmse": [1, 2], "lag_r_0": [0.9, 0.8], "lag_r_1": [0.7, 0.6]}}
paths.append(vr.plot_lag_correlation(res, [1, 2], out / "lag.png"))
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules,
      all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths))
"""


def test_plots_leave_the_callers_backend_alone(tmp_path):
    proc = subprocess.run([sys.executable, "-c", PLOTS, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["svg", "False", "True"]  # backend unchanged, pyplot never loaded, PNGs written
