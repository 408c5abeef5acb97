"""docs/tutorial.ipynb runs end to end on a real Jupyter kernel (nbclient), and its
outputs hold what its text claims."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        out.append(o.get("text", ""))
        out += [str(v) for k, v in o.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(out)


@pytest.mark.embedded
def test_tutorial_executes():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # cwd = the repository root, so the kernel imports this checkout's tempo_lens
    NotebookClient(
        nb, timeout=170, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    dla = re.search(r"misses it by ([0-9.e+-]+)", _text(code[1]))
    assert dla and float(dla.group(1)) < 1e-4
    assert "TempoRun" in _text(code[2]) and 'class="bracket"' in _text(code[2])
    assert _text(code[3]).startswith("TempoRun(model='SmolLM2-135M-Instruct'")
    assert re.search(r"layers that matter most: \[\d+, \d+, \d+\]", _text(code[4]))
    assert any("image/png" in o.get("data", {}) for o in code[4].outputs)
    views = [_text(c) for c in code[5:7]]
    assert "CircuitsVis.AttentionHeads" in views[0] and "CircuitsVis.ColoredTokens" in views[1]
    assert len(views[0]) > 1_000_000 > len(views[1])  # the bundle once, in the first view
    # no widget-less tqdm fallback warning: ipywidgets is installed with the notebook extra
    assert not any("IProgress not found" in _text(c) for c in code)
