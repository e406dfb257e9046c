"""Every ```python block of docs/methods_2.md runs (blocks marked ```python sketch are illustrations)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods_2.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_python_block_runs(index):
    exec(compile(BLOCKS[index], f"{DOC.name}[block {index}]", "exec"), {"__name__": "docs"})


def test_the_doc_has_runnable_blocks():
    assert BLOCKS, "docs/methods_2.md should show at least one runnable example"
