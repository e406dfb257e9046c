"""A test plugin (loaded with ``--plugin``): a recipe kind that writes an output, then fails the way
``fail`` says -- ``crash`` (a bug: RuntimeError), ``config`` (a user error found only at run time)
or ``none`` (succeeds) -- so that tests can check what a failed run leaves behind."""

from dataclasses import dataclass

from omniguide.core.errors import ConfigError
from omniguide.recipes import RunContext, register_recipe


@dataclass
class HalfDoneConfig:
    fail: str = "crash"   # crash | config | none


@register_recipe("half-done", HalfDoneConfig)
def run_half_done(cfg: HalfDoneConfig, run: RunContext) -> dict:
    """Write part.txt, then fail as configured."""
    run.write_text("part.txt", "produced before the failure\n")
    if cfg.fail == "crash":
        raise RuntimeError("disk on fire\nsecond line of the message")
    if cfg.fail == "config":
        raise ConfigError("fail", "found wrong only at run time")
    return {"ok": True}
