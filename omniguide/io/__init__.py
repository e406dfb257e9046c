"""Writing files atomically: a killed run leaves either the complete file or none under its name.

Shared by the recipes (run folders, checkpoints) and the modalities' output writers (PNG, WAV,
MP4), so that no layer needs the recipe system to write a file safely.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp"   # atomic_path's temporaries are ".<name>.tmp<random><suffix>"


def remove_temporaries(folder: Path | str) -> None:
    """Delete the temporaries a killed writer left anywhere under ``folder`` (call before writing there)."""
    for path in Path(folder).rglob(f".*{TMP_MARK}*"):
        if path.is_file():
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """A hidden temporary file next to ``final``, renamed onto it when the block succeeds.

    The temporary name keeps the suffix (``.x.png.tmp123.png``) so writers that pick a format
    from the extension still work. On error it is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}{TMP_MARK}", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)   # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
