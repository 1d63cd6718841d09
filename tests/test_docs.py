"""The documentation's code runs: every python block of the guides, each on its own in a fresh interpreter,
and every example script (the docs build runs them too, through sphinx-gallery)."""

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _guide_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in sorted((ROOT / "docs" / "guides").glob("*.rst")):
        for i, match in enumerate(re.finditer(r"\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", path.read_text())):
            blocks.append((f"{path.stem}[{i}]", textwrap.dedent(match.group(1))))
    return blocks


def _markdown_blocks() -> list[tuple[str, str]]:
    """The python blocks of the docs' Markdown pages (guides and the pages beside them)."""
    pages = sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "docs" / "guides").glob("*.md"))
    return [(f"{path.stem}[{i}]", code) for path in pages
            for i, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S))]


GUIDE_BLOCKS = _guide_blocks() + _markdown_blocks()
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))


def test_the_guides_and_examples_are_there():
    assert {name.split("[")[0] for name, _ in GUIDE_BLOCKS} >= {"own_estimator", "own_model", "tidy_table", "claims",
                                                                 "first_steps", "training", "sweeps",
                                                                 "categorical"}
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("name, code", GUIDE_BLOCKS, ids=[name for name, _ in GUIDE_BLOCKS])
def test_guide_block_runs_on_its_own(name, code, tmp_path, run_python):
    script = tmp_path / "block.py"
    script.write_text(code)
    done = run_python(script, cwd=tmp_path)
    assert done.returncode == 0, f"guide block {name} failed:\n{code}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example, tmp_path, run_python):
    done = run_python(example, cwd=tmp_path)
    assert done.returncode == 0, f"{example.name} failed:\n{done.stderr[-3000:]}"


def test_docstrings_use_numpydoc_sections_only():
    """The docs build renders numpydoc sections; a Google-style ``Args:`` header would print as plain text."""
    google = re.compile(r"^\s+(Args|Arguments|Attributes|Returns|Raises|Yields|Examples?|Notes?):\s*$", re.M)
    found = [f"{path.relative_to(ROOT)}: {m.group(1)}:" for path in sorted((ROOT / "gradstats").rglob("*.py"))
             for m in google.finditer(path.read_text())]
    assert not found, found
