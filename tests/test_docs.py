"""Docs: the API reference builds from the docstrings with no warning, and docs/ cites
only files of this repository.

    python -m tests.test_docs build/api     # the API reference (./dev.sh docs)
"""

from __future__ import annotations

import pkgutil
import re
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def api_modules() -> list[str]:
    """`tempo_lens` plus the submodules pdoc would not reach by itself: those of a package
    whose `__all__` lists names, not modules (pdoc walks the others)."""
    import importlib

    import tempo_lens

    subs = pkgutil.walk_packages(tempo_lens.__path__, prefix="tempo_lens.")
    hidden = []
    for m in subs:
        parent, name = m.name.rsplit(".", 1)
        listed = getattr(importlib.import_module(parent), "__all__", None)
        if listed is not None and name not in listed:  # a listed name pdoc follows itself
            hidden.append(m.name)
    return ["tempo_lens", *sorted(hidden)]


def build_api(out: Path) -> list[warnings.WarningMessage]:
    """Write the pdoc reference to `out`; returns the warnings pdoc or our modules raised."""
    import pdoc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*api_modules(), output_directory=out)
    return [w for w in caught if "pdoc" in w.filename or "tempo_lens" in w.filename]


def test_api_reference_builds_without_warnings(tmp_path):
    problems = build_api(tmp_path)
    assert problems == [], [f"{w.filename}:{w.lineno}: {w.message}" for w in problems]
    for page in ("tempo_lens.html", "tempo_lens/loading.html", "tempo_lens/provenance.html"):
        assert (tmp_path / page).is_file(), page
    loading = (tmp_path / "tempo_lens/loading.html").read_text()
    assert "restore_weight_layout" in loading and "fold_value_biases" in loading


MD_LINK = re.compile(r"\]\(([^)#\s]+)")
CITED = re.compile(r"\b([\w./-]+\.(?:md|py|ipynb|yaml|json|png))\b")


@pytest.mark.parametrize(
    "doc",
    ["README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
)
def test_docs_cite_only_files_of_the_repository(doc):
    text = (ROOT / doc).read_text()
    assert "REFERENCE.md" not in text and "DESIGN.md" not in text and "../shared" not in text
    for target in MD_LINK.findall(text):
        if target.startswith(("http:", "https:", "mailto:")):
            continue
        assert (ROOT / doc).parent.joinpath(target).resolve().exists(), f"{doc} -> {target}"


def test_code_cites_no_missing_design_files():
    hits = [
        f"{p.relative_to(ROOT)}"
        for p in (ROOT / "tempo_lens").rglob("*.py")
        if re.search(r"\b(DESIGN|REFERENCE)\.md", p.read_text())
    ]
    assert hits == []


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/api")
    found = build_api(out)
    for w in found:
        print(f"warning: {w.filename}:{w.lineno}: {w.message}", file=sys.stderr)
    print(f"API reference: {out / 'index.html'}")
    sys.exit(1 if found else 0)
