"""map(progress=True) in a real Jupyter kernel: a notebook run by nbconvert shows the widget."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbconvert.preprocessors import ExecutePreprocessor

pytestmark = pytest.mark.timeout(180)

WIDGET = "application/vnd.jupyter.widget-view+json"


def test_a_notebook_shows_a_progress_widget(tmp_path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("import squall\nex = squall.Executor(processes=1)"),
        nbformat.v4.new_code_cell(
            "def double(x):\n    return 2 * x\n"  # defined in a cell: travels by value
            "results = list(ex.map(double, range(200), progress=True))\nsum(results)"
        ),
        nbformat.v4.new_code_cell("ex.shutdown()"),
    ]
    ExecutePreprocessor(timeout=120, kernel_name="python3").preprocess(
        notebook, {"metadata": {"path": str(tmp_path)}}
    )
    outputs = notebook.cells[1].outputs
    widgets = [o for o in outputs if WIDGET in o.get("data", {})]
    assert widgets, f"no progress widget among {json.dumps(outputs)[:500]}"
    results = [o for o in outputs if o.get("output_type") == "execute_result"]
    assert results and results[0]["data"]["text/plain"] == str(2 * sum(range(200)))
