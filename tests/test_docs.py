"""Docs that run: every ```python block of ``README.md`` and ``docs/*.md`` is executed.

The blocks of one file run in order in one fresh namespace (a later block may use an earlier one's
names), in a temporary working folder, each under its own timeout. A block whose info string is
exactly ``python sketch`` is an illustration and is not run (docs/README.md describes the
convention). A failure names the file, the block's number and its first line.
"""

from __future__ import annotations

import os
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN, SKETCH = "python", "python sketch"


@dataclass
class Block:
    file: Path
    number: int          # 1-based, counting the file's runnable blocks
    line: int            # line of the opening fence
    code: str

    @property
    def first_line(self) -> str:
        return next((ln for ln in self.code.splitlines() if ln.strip()), "")

    @property
    def name(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.number}"


def python_blocks(path: Path) -> list[Block]:
    """The runnable ```python blocks of a markdown file (``python sketch`` blocks left out)."""
    blocks, info, start, body = [], None, 0, []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if info is None:
            if stripped.startswith("```"):
                info, start, body = stripped[3:].strip(), n, []
        elif stripped == "```":
            if info == RUN:
                blocks.append(Block(path, len(blocks) + 1, start, "\n".join(body) + "\n"))
            info = None
        else:
            body.append(line)
    return blocks


def test_the_block_parser_runs_python_and_skips_sketches(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```python\nx = 1\n```\n```python sketch\nnot run\n```\n```bash\nls\n```\n"
                    "```python\ny = x + 1\n```\n")
    assert [(b.number, b.line, b.code) for b in python_blocks(page)] == [(1, 2, "x = 1\n"), (2, 11, "y = x + 1\n")]


BLOCKS = [b for f in FILES for b in python_blocks(f)]
NAMESPACES: dict[Path, types.ModuleType] = {}   # one module per file, shared by its blocks in order
FAILED: dict[Path, str] = {}            # files whose earlier block failed
FOLDERS: dict[Path, Path] = {}


def namespace(path: Path) -> dict:
    """A fresh module per file, registered in ``sys.modules`` like a script's ``__main__`` (dataclasses
    and pickling look their class's module up there)."""
    if path not in NAMESPACES:
        module = types.ModuleType(f"doc_{path.stem.replace('-', '_')}")
        sys.modules[module.__name__] = module
        NAMESPACES[path] = module
    return NAMESPACES[path].__dict__


@pytest.fixture
def one_thread():
    """Doc examples are tiny; on a shared machine torch's thread pool makes each small op slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_doc_block_runs(block: Block, tmp_path_factory, monkeypatch, one_thread):
    if block.file in FAILED:
        pytest.skip(f"an earlier block of {block.file.name} failed: {FAILED[block.file]}")
    folder = FOLDERS.setdefault(block.file, tmp_path_factory.mktemp(block.file.stem))
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # dont_inherit: the block runs as its own file would, without this module's __future__ imports
    code = compile(block.code, f"{block.file.name} block {block.number} (line {block.line})", "exec",
                   dont_inherit=True)
    try:
        exec(code, namespace(block.file))
    except BaseException as err:  # noqa: BLE001 - report any failure, with the block that raised it
        FAILED[block.file] = f"block {block.number}"
        where = f"{block.file.relative_to(ROOT)} block {block.number} (line {block.line}: {block.first_line!r})"
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        pytest.fail(f"{where} failed: {detail}", pytrace=False)


def test_every_markdown_file_is_checked():
    assert {p.name for p in FILES} >= {"README.md", "recipes.md", "core.md"}
    assert os.path.isdir(ROOT / "docs")
