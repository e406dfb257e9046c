"""Every ```python block of docs/distill3d.md runs (``python sketch`` blocks are illustrations)."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[1] / "docs" / "distill3d.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_doc_block_runs(code):
    exec(compile(code, str(DOC), "exec"), {})
