"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    namespace = {"print": lambda *args: None}  # blocks build on one another, as in a session
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
