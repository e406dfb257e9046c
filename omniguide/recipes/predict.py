"""Generation over a prompt list as a Lightning predict loop.

Items (prompts with a global index, a seed and per-item overrides) come from an inline list or a
file (``.txt``: one prompt per line; ``.jsonl``: one object per line with ``prompt`` and optional
``seed``, ``guider``, ``steps``, ``num_samples``, ``negative_prompt``). Each rank takes a disjoint
shard of the items not yet complete; a writer callback stores each result under its global index
with the writer of its kind (``items/000012.pt`` for points, ``items/000012_0.png`` ... for images,
WAV for audio, MP4/GIF for video), then ``items/000012.json`` listing those files -- all atomic; the
JSON marks the item complete, so a rerun in the same folder skips finished items and results do
not depend on the sharding.

This module imports Lightning (its classes extend Lightning's); the ``sample`` runner imports it
inside its functions, so that loading the recipe schemas stays cheap.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ..core.errors import ConfigError, did_you_mean
from ..io import atomic_path

ITEM_KEYS = ("prompt", "seed", "guider", "steps", "num_samples", "negative_prompt")
# output kind -> "module:function" writing one item's files (``write_outputs(folder, stem, data, rate,
# options) -> names``); points are written here
WRITERS = {
    "image": "omniguide.modalities.image.io:write_outputs",
    "audio": "omniguide.modalities.audio.io:write_outputs",
    "video": "omniguide.modalities.video.io:write_outputs",
}


@dataclass
class Item:
    """One unit of generation work."""

    index: int
    prompt: Any
    seed: int
    overrides: dict = field(default_factory=dict)
    where: str = ""          # config path of the item, for error messages


def load_items(prompts: Sequence[Any], prompts_file: str | None, base_seed: int) -> list[Item]:
    """Inline prompts, then the file's; item ``i`` gets seed ``base_seed + i`` unless it sets one."""
    raw = [(p, f"prompts.{i}") for i, p in enumerate(prompts)]
    if prompts_file:
        raw += _read_prompt_file(Path(prompts_file))
    items = []
    for index, (entry, where) in enumerate(raw):
        if isinstance(entry, dict):
            for key in entry:
                if key not in ITEM_KEYS:
                    raise ConfigError(f"{where}.{key}", f"unknown item key{did_you_mean(key, ITEM_KEYS)}")
            if "prompt" not in entry:
                raise ConfigError(f"{where}.prompt", "missing")
            seed = entry.get("seed", base_seed + index)
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise ConfigError(f"{where}.seed", f"expected an int, got {seed!r}")
            overrides = {k: v for k, v in entry.items() if k not in ("prompt", "seed")}
            items.append(Item(index, entry["prompt"], seed, overrides, where))
        else:
            items.append(Item(index, entry, base_seed + index, {}, where))
    if not items:
        raise ConfigError("prompts", "no prompts: give a list in 'prompts' or a file in 'prompts_file'")
    return items


def _read_prompt_file(path: Path) -> list[tuple[Any, str]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        where = f"{path.name}:{n}"
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(where, f"invalid JSON: {err.msg}") from None
            if not isinstance(entry, dict):
                raise ConfigError(where, "expected a JSON object per line")
            out.append((entry, where))
        else:
            out.append((line.strip(), where))
    return out


def write_points(folder: Path, stem: str, data: torch.Tensor, rate: int | None, options: Mapping) -> list[str]:
    """Points (the testbed's samples) as ``<stem>.pt``."""
    with atomic_path(Path(folder) / f"{stem}.pt") as tmp:
        torch.save(data.detach().cpu(), tmp)
    return [f"{stem}.pt"]


def writer(kind: str) -> Callable:
    """The function that writes outputs of ``kind``."""
    if kind == "points":
        return write_points
    module, _, attr = WRITERS[kind].partition(":")
    return getattr(importlib.import_module(module), attr)


class ItemStore:
    """``folder/items/``: each item's output files, then ``NNNNNN.json`` listing them; an item is
    complete when its JSON and every file it lists exist."""

    def __init__(self, folder: Path, options: Mapping | None = None):
        self.folder = Path(folder) / "items"
        self.options = dict(options or {})

    def meta_path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.json"

    def done(self, index: int) -> bool:
        """True when item ``index`` was written completely (its JSON is written last)."""
        path = self.meta_path(index)
        if not path.is_file():
            return False
        files = json.loads(path.read_text()).get("files", [])
        return all((self.folder / f).is_file() for f in files)

    def write(self, index: int, kind: str, data: torch.Tensor, rate: int | None, meta: dict) -> None:
        """Write the outputs with the writer of their kind, then the metadata, each atomically."""
        files = writer(kind)(self.folder, f"{index:06d}", data, rate, self.options)
        meta = {**meta, "kind": kind, "files": files, **({"rate": rate} if rate else {})}
        with atomic_path(self.meta_path(index)) as tmp:
            tmp.write_text(json.dumps(meta, indent=1) + "\n")

    def read_all(self) -> list[dict]:
        """The metadata of every complete item, by index."""
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob("*.json"))]


class ItemData(lightning.LightningDataModule):
    """This rank's disjoint shard (``pending[rank::world]``) of the items not yet complete.

    Shards are padded with ``None`` (no work) to equal length: Lightning refuses an empty loader
    on one rank while others have batches, and its own distributed sampler would pad with
    duplicated items instead."""

    def __init__(self, items: list[Item], store: ItemStore):
        super().__init__()
        self.items, self.store = items, store

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        """One item (or padding) per batch."""
        pending = [item for item in self.items if not self.store.done(item.index)]
        rank, world = self.trainer.global_rank, self.trainer.world_size
        shard: list[Item | None] = list(pending[rank::world])
        shard += [None] * (-(-len(pending) // world) - len(shard))
        return torch.utils.data.DataLoader(shard, batch_size=None, collate_fn=_identity)


def _identity(x: Any) -> Any:
    return x


class Generator(lightning.LightningModule):
    """``predict_step(item)`` -> ``(item, generated)`` through a generation function."""

    def __init__(self, generate: Callable[[Item, torch.device], Any]):
        super().__init__()
        self.generate = generate

    def predict_step(self, item: Item | None, batch_idx: int = 0) -> tuple[Item, Any] | None:
        """Generate one item."""
        if item is None:   # padding of a short shard
            return None
        return item, self.generate(item, self.device)


class ItemWriter(BasePredictionWriter):
    """Writes each predicted item under its global index as soon as it is done."""

    def __init__(self, store: ItemStore):
        super().__init__(write_interval="batch")
        self.store = store

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        """Store a finished item under its global index."""
        if prediction is None:
            return
        item, generated = prediction
        self.store.write(item.index, generated.kind, generated.data, generated.rate, generated.meta)
