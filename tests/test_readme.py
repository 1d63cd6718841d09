"""The README's Python examples run as written (as one script: the blocks build on one another)."""

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    script = tmp_path / "readme_examples.py"  # a real file: hypothesis reads the source of @given functions
    script.write_text("\n".join(blocks))
    runpy.run_path(str(script), init_globals={"print": lambda *args: None})
