"""A test plugin (loaded with ``--plugin``): a callback that slows training down so a test can
kill a run mid-way, and a tiny recipe kind that exercises the RunContext contract."""

import time
from dataclasses import dataclass, field
from typing import Any

import lightning

from omniguide.core.registry import build_guider
from omniguide.recipes import RunContext, register_callback, register_recipe


@register_callback("step-delay")
class StepDelay(lightning.Callback):
    """Sleep ``seconds`` after every training batch."""

    def __init__(self, seconds: float = 0.02):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


@dataclass
class EchoConfig:
    guiders: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "cfg", "scale": 3.0}])
    seed: int = 0


def check_echo(cfg: EchoConfig) -> None:
    for i, g in enumerate(cfg.guiders):
        build_guider(g, f"guiders.{i}")


@register_recipe("echo", EchoConfig, check=check_echo)
def run_echo(cfg: EchoConfig, run: RunContext) -> dict:
    """Write a few files through the RunContext helpers."""
    run.write_json("table.json", {"n": len(cfg.guiders)})
    run.write_text("table.md", "| n |\n")
    with run.atomic("raw.bin") as tmp:
        tmp.write_bytes(b"\x00" * 10)
    run.log("echo done")
    return {"n": len(cfg.guiders), "seed": cfg.seed}
