"""Layer selection: the modules of a denoiser that a selector names.

Selectors: an int (a block of a transformer's block list; negative counts from the end), ``"mid"``,
``"down"``, ``"up"``, ``"down.1"``, ``"up.0"`` (UNet regions), or a module name, name prefix or glob
(``"transformer_blocks.3"``, ``"*.attn1"``). A selector that matches nothing is an error naming it.
Diffusers modules are duck-typed (``to_q``, ``to_k``, ``to_v``; block-list names); no diffusers import.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError, GuidanceError

Selector = int | str
# names of block lists in diffusers transformers (and the usual names elsewhere)
BLOCK_LISTS = ("transformer_blocks", "joint_blocks", "blocks", "single_transformer_blocks", "layers")
UNET_REGIONS = {"mid": "mid_block", "down": "down_blocks", "up": "up_blocks"}


# -- finding the modules -------------------------------------------------------------------------
def is_attention(module: nn.Module) -> bool:
    """A diffusers-style attention module (``to_q``, ``to_k``, ``to_v``)."""
    return all(hasattr(module, a) for a in ("to_q", "to_k", "to_v"))


def is_self_attention(name: str, module: nn.Module) -> bool:
    if not is_attention(module):
        return False
    cross = getattr(module, "is_cross_attention", None)
    return not cross if cross is not None else not name.endswith("attn2")


def main_blocks(root: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """A transformer's top-level block list (``transformer_blocks``, ``blocks``, ...)."""
    for name in BLOCK_LISTS:
        blocks = getattr(root, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return name, blocks
    return None


def block_modules(root: nn.Module) -> dict[str, nn.Module]:
    """Every transformer block: the items of any block list, at any depth (UNet blocks included)."""
    return {f"{name}.{i}": block for name, module in root.named_modules()
            if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LISTS
            for i, block in enumerate(module)}


# -- matching selectors ----------------------------------------------------------------------------
def _prefixes(selector: Selector, root: nn.Module, who: str) -> list[str] | None:
    """Name prefixes a selector stands for, or None for a plain name / glob."""
    if isinstance(selector, int) or (isinstance(selector, str) and selector.lstrip("-").isdigit()):
        stack = main_blocks(root)
        if stack is None:
            raise GuidanceError(
                f"{who}: integer layer {selector} needs a model with a top-level block list "
                f"({', '.join(BLOCK_LISTS)}); {type(root).__name__} has none: use 'mid', 'down.N', 'up.N' "
                "or a module name"
            )
        name, blocks = stack
        i = int(selector)
        if not -len(blocks) <= i < len(blocks):
            raise GuidanceError(f"{who}: layer {i} is out of range for {name} ({len(blocks)} blocks)")
        return [f"{name}.{i % len(blocks)}"]
    region, _, index = selector.partition(".")
    if region in UNET_REGIONS and (index == "" or index.isdigit()):
        return [UNET_REGIONS[region] + (f".{index}" if index else "")]
    return None


def _matches(name: str, prefixes: list[str] | None, selector: str) -> bool:
    if prefixes is not None:
        return any(name == p or name.startswith(p + ".") for p in prefixes)
    return name == selector or name.startswith(selector + ".") or fnmatch.fnmatchcase(name, selector)


def select(
    root: nn.Module, selectors: Sequence[Selector], candidates: dict[str, nn.Module], who: str, what: str
) -> dict[str, nn.Module]:
    """The candidates (``{name: module}``) matched by any selector; each selector must match one."""
    chosen: dict[str, nn.Module] = {}
    for selector in selectors:
        prefixes = _prefixes(selector, root, who)
        hits = {n: m for n, m in candidates.items() if _matches(n, prefixes, str(selector))}
        if not hits:
            names = list(candidates)
            listed = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            raise GuidanceError(f"{who}: layer selector {selector!r} matches no {what} of {type(root).__name__} "
                                f"(candidates: {listed or 'none'})")
        chosen.update(hits)
    return chosen


def select_self_attention(root: nn.Module, layers: Sequence[Selector] | None, who: str) -> dict[str, nn.Module]:
    """The self-attention modules ``layers`` selects (``None``: :func:`default_attention_layers`);
    shared by PAG's and SEG's perturbations."""
    layers = layers or default_attention_layers(root)
    candidates = {n: m for n, m in root.named_modules() if is_self_attention(n, m)}
    return select(root, layers, candidates, who, "self-attention module")


# -- defaults and validation -----------------------------------------------------------------------
def default_attention_layers(root: nn.Module) -> tuple[Selector, ...]:
    """PAG / SEG default: the UNet mid-block self-attention (PAG paper, ComfyUI, SEG-SDXL); for a
    transformer, its middle block."""
    mid = getattr(root, "mid_block", None)
    if mid is not None and any(is_attention(m) for m in mid.modules()):
        return ("mid",)
    stack = main_blocks(root)
    if stack is not None:
        return (len(stack[1]) // 2,)
    return ("*",)


def default_skip_layers(root: nn.Module) -> tuple[Selector, ...]:
    """Skip-layer default: SD3.5's blocks 7, 8, 9 of 24, scaled to the model's depth; a UNet's mid block."""
    stack = main_blocks(root)
    if stack is None:
        return ("mid",)
    n = len(stack[1])
    return tuple(dict.fromkeys(min(n - 1, round(k * n / 24)) for k in (7, 8, 9)))


def as_selectors(layers: Any, who: str = "layers") -> tuple[Selector, ...] | None:
    """Accept one selector or a sequence of them (an int alone is fine, unlike diffusers' shorthand)."""
    if layers is None:
        return None
    items = (layers,) if isinstance(layers, (int, str)) else tuple(layers)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ConfigError(who, f"a layer selector is an int or a string, got {item!r}")
    if not items:
        raise ConfigError(who, "empty layer list; give None for the method's default")
    return items
