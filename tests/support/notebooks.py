"""Small parameterised notebooks for pipeline tests, written with nbformat."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def write_notebook(path: Path, parameters: str, *cells: str) -> Path:
    """A notebook whose first code cell (tagged `parameters`) is `parameters`, followed by `cells`."""
    nb = new_notebook(
        cells=[new_markdown_cell(f"# {path.stem}"), new_code_cell(parameters, metadata={"tags": ["parameters"]})]
        + [new_code_cell(source) for source in cells],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


REPORTING = """
from contextlab.pipelines.report import RunReport
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

report = RunReport()
report.param("doubled", x * 2)
report.tag("contextlab.model", model)
for step in range(3):
    report.metric("loss", 1.0 / (step + 1), step=step)
report.metric("accuracy", x / 10)
fig, ax = plt.subplots()
ax.bar(["a", "b"], [x, 1])
report.figure("accuracy by variant", fig)
report.table("cases", pd.DataFrame({"case": [1, 2], "ok": [True, False]}))
for variant, score in (("stable", 0.5), ("canary", 0.75)):
    child = report.child(f"{variant} x {model}")
    child.params({"variant": variant, "model": model})
    child.metric("accuracy", score)
"""


def standard_notebooks(folder: Path) -> Path:
    """ok (reports metrics), fails (raises in cell 3), slow (sleeps), dies (kills its kernel), flaky."""
    write_notebook(folder / "ok.ipynb", 'x = 1\nmodel = "local"', REPORTING)
    write_notebook(folder / "fails.ipynb", "x = 1", "y = x + 1", "raise ValueError(f'bad input {y}')", "z = 3")
    write_notebook(folder / "slow.ipynb", "seconds = 60", "import time\ntime.sleep(seconds)")
    write_notebook(folder / "dies.ipynb", "x = 1", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    # Fails until its marker file has been created `succeed_after` times (counts attempts across runs).
    write_notebook(
        folder / "flaky.ipynb",
        "marker = ''\nsucceed_after = 1",
        "from pathlib import Path\np = Path(marker)\nn = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\nif n < succeed_after:\n    raise RuntimeError(f'attempt {n + 1} fails')",
    )
    return folder
