"""Perturbations: what a perturbed branch changes inside the model while (and only while) it runs.

A perturbation is called with the branch's model and returns a context manager; the executor
enters it around that branch's forward pass only (see :class:`~omniguide.core.branch.Perturbation`).
Three are implemented for diffusers-style attention, duck-typed (this file imports torch only):

* :class:`IdentityAttention` (PAG, Ahn et al. 2024, arXiv:2403.17377): the self-attention map is
  replaced by the identity, so ``softmax(QK^T/sqrt(d)) V`` becomes ``V``. Implemented by a
  ``TorchFunctionMode`` that answers ``F.scaled_dot_product_attention`` with ``value`` inside the
  selected modules only.
* :class:`BlurredQueries` (SEG, Hong 2024, arXiv:2408.00760): the self-attention queries are
  Gaussian-blurred on their token grid (2-D for images, per frame for video, 1-D for audio);
  ``sigma = inf`` replaces them by their mean. The grid comes from the sample's aspect ratio.
* :class:`SkipBlocks` (skip-layer guidance, SD3.5 / STG arXiv:2411.18664): a block returns its input.

Layers are chosen with *selectors*: an int (a block of a transformer's block list; negative
counts from the end), ``"mid"``, ``"down"``, ``"up"``, ``"down.1"``, ``"up.0"`` (UNet regions), or a
module name, name prefix or glob (``"transformer_blocks.3"``, ``"*.attn1"``). ``None`` means the
method's default. A selector that matches nothing is an error naming it, and a selected module that
never runs during the forward pass is an error too: a perturbed branch never silently equals ``cond``.
Hooks are removed when the branch ends, also when its forward pass raises.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import math
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .errors import ConfigError, GuidanceError

Selector = int | str
# names of block lists in diffusers transformers (and the usual names elsewhere)
BLOCK_LISTS = ("transformer_blocks", "joint_blocks", "blocks", "single_transformer_blocks", "layers")
UNET_REGIONS = {"mid": "mid_block", "down": "down_blocks", "up": "up_blocks"}
INF_BLUR = 9999.0  # sigma above this is treated as infinite (official SEG-SDXL's threshold)


# -- finding the modules -------------------------------------------------------------------------
def find_module(model: Any, depth: int = 3) -> nn.Module:
    """The ``nn.Module`` behind a model callable: the model itself, a bound method's owner, a
    ``functools.partial`` argument, or a variable a lambda closes over (``lambda x, t, **k: unet(...)``)."""
    frontier = [model]
    for _ in range(depth + 1):
        found = [m for m in frontier if isinstance(m, nn.Module)]
        if found:  # prefer a module with attention or blocks (a denoiser over, say, a text encoder)
            return next((m for m in found if main_blocks(m) or any(map(is_attention, m.modules()))), found[0])
        frontier = [child for obj in frontier for child in _referents(obj)]
    raise GuidanceError(
        f"cannot find a torch module inside the model callable {model!r}; give the perturbation module=..."
    )


def _referents(obj: Any) -> list[Any]:
    out = [getattr(obj, "__self__", None), getattr(obj, "__wrapped__", None)]
    if isinstance(obj, functools.partial):
        out += [obj.func, *obj.args, *obj.keywords.values()]
    for cell in getattr(obj, "__closure__", None) or ():
        with contextlib.suppress(ValueError):
            out.append(cell.cell_contents)
    if inspect.isfunction(obj):  # a lambda may also name a module-level model
        out += [obj.__globals__.get(name) for name in obj.__code__.co_names]
    if not inspect.isfunction(obj) and not isinstance(obj, nn.Module) and hasattr(obj, "__dict__"):
        out += list(vars(obj).values())
    skip = (str, bytes, int, float, Tensor, type, types.ModuleType)  # never crawl packages or classes
    return [o for o in out if o is not None and not isinstance(o, skip)]


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
    out = {}
    for name, module in root.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.ModuleList) and last in BLOCK_LISTS:
            for i, block in enumerate(module):
                out[f"{name}.{i}"] = block
    return out


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
            examples = ", ".join(list(candidates)[:4]) or "none"
            raise GuidanceError(
                f"{who}: layer selector {selector!r} matches no {what} of {type(root).__name__} "
                f"({len(candidates)} candidates, e.g. {examples})"
            )
        chosen.update(hits)
    return chosen


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


# -- patching forwards, with guaranteed removal ----------------------------------------------------
@contextlib.contextmanager
def patched_forwards(
    modules: dict[str, nn.Module], wrap: Callable[[str, nn.Module, Callable], Callable]
) -> Iterator:
    """Replace ``module.forward`` by ``wrap(name, module, forward)`` while the block runs."""
    saved = []
    try:
        for name, module in modules.items():
            saved.append((module, module.__dict__.get("forward")))
            module.forward = wrap(name, module, module.forward)
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous


def _check_fired(fired: dict[str, int], who: str, what: str) -> None:
    idle = [name for name, count in fired.items() if count == 0]
    if idle:
        raise GuidanceError(f"{who}: {what} never happened in {idle[0]} during the forward pass{_more(idle)}")


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


@dataclass(frozen=True)
class _LayerPerturbation:
    layers: tuple[Selector, ...] | None = None
    module: nn.Module | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "layers", as_selectors(self.layers, f"{self.who}.layers"))

    who = "perturbation"

    def root(self, model: Any) -> nn.Module:
        return self.module if self.module is not None else find_module(model)


# -- PAG: identity self-attention ----------------------------------------------------------------
class _IdentitySDPA(TorchFunctionMode):
    """Answers ``F.scaled_dot_product_attention(q, k, v)`` with ``v`` (attention map = identity)."""

    def __init__(self, name: str, fired: dict[str, int]):
        super().__init__()
        self.name, self.fired = name, fired

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query = kwargs.get("query", args[0] if args else None)
        value = kwargs.get("value", args[2] if len(args) > 2 else None)
        if query.shape[-2] != value.shape[-2]:
            # diffusers silently falls back to normal attention here; a perturbed branch must differ
            raise GuidanceError(
                f"identity attention in {self.name}: query length {query.shape[-2]} != key/value length "
                f"{value.shape[-2]}, so softmax cannot be replaced by the identity (a cross-attention?)"
            )
        if value.ndim >= 3 and value.shape[-3] != query.shape[-3]:  # grouped-query attention
            value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
        self.fired[self.name] += 1
        return value


@dataclass(frozen=True)
class IdentityAttention(_LayerPerturbation):
    """PAG's perturbation: selected self-attention outputs ``V`` instead of ``softmax(QK^T/sqrt d) V``.

    Ahn et al., "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance",
    arXiv:2403.17377. Default layers: the UNet mid block's self-attention, or a transformer's middle block."""

    who = "pag"

    def __call__(self, model: Any) -> contextlib.AbstractContextManager:
        return self._run(model)

    @contextlib.contextmanager
    def _run(self, model: Any) -> Iterator:
        root = self.root(model)
        layers = self.layers or default_attention_layers(root)
        candidates = {n: m for n, m in root.named_modules() if is_self_attention(n, m)}
        targets = select(root, layers, candidates, self.who, "self-attention module")
        fired = dict.fromkeys(targets, 0)

        def wrap(name, module, forward):
            def identity_forward(*args, **kwargs):
                with _IdentitySDPA(name, fired):
                    return forward(*args, **kwargs)
            return identity_forward

        with patched_forwards(targets, wrap):
            yield
        _check_fired(fired, self.who, f"scaled_dot_product_attention (processor {_processor(targets)})")


def _processor(targets: dict[str, nn.Module]) -> str:
    module = next(iter(targets.values()))
    return type(getattr(module, "processor", module)).__name__


# -- SEG: blurred queries -------------------------------------------------------------------------
def gaussian_kernel_size(sigma: float) -> int:
    """SEG-SDXL's kernel size: the odd number ``ceil(6 sigma) + 1 - ceil(6 sigma) % 2``."""
    k = math.ceil(6 * sigma)
    return k + 1 - k % 2


def gaussian_blur(x: Tensor, sigma: float, dims: Sequence[int]) -> Tensor:
    """Separable Gaussian blur of ``x`` along ``dims`` with reflect padding (SEG-SDXL's blur).

    Per axis of size ``n`` the kernel has ``min(ceil(6 sigma)|odd, n if n odd else n + 1)`` taps at
    ``-h..h`` with weights ``exp(-x^2 / (2 sigma^2))`` normalised to 1; ``sigma = inf`` (or above
    9999) gives the mean over ``dims`` instead, the limit SEG calls infinite blur."""
    if math.isinf(sigma) or sigma > INF_BLUR:
        return x.mean(dim=tuple(dims), keepdim=True).expand_as(x)
    if sigma <= 0:
        raise ConfigError("blur_sigma", f"must be > 0, got {sigma}")
    for dim in dims:
        x = _blur_1d(x, sigma, dim % x.ndim)
    return x


def _blur_1d(x: Tensor, sigma: float, dim: int) -> Tensor:
    n = x.shape[dim]
    size = min(gaussian_kernel_size(sigma), n if n % 2 else n + 1)
    if size <= 1:
        return x
    half = (size - 1) / 2
    taps = torch.linspace(-half, half, size, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x)
    moved = x.movedim(dim, -1)
    flat = moved.reshape(-1, 1, n)
    flat = F.pad(flat, (size // 2, size // 2), mode="reflect")
    out = F.conv1d(flat, kernel.view(1, 1, -1))
    return out.reshape(moved.shape).movedim(-1, dim)


def token_grid(tokens: int, batch: int, sample_shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """``(frames, grid)`` of ``tokens`` query tokens for a sample of ``sample_shape``.

    3-D ``[B, C, T]``: a 1-D grid of all tokens. 4-D ``[B, C, H, W]``: ``(h, w)`` with
    ``h * w = tokens`` and ``h / w = H / W`` (any down-sampling or patch size). 5-D
    ``[B, C, F, H, W]``: per-frame attention (query batch ``B * F``) or all frames in one sequence
    (query batch ``B``, ``tokens = f * h * w`` with the largest ``f <= F``)."""
    ndim = len(sample_shape)
    if ndim == 3:
        return 1, (tokens,)
    if ndim not in (4, 5):
        raise GuidanceError(f"seg: cannot lay queries on a grid for a {ndim}-D sample {tuple(sample_shape)}")
    height, width = sample_shape[-2], sample_shape[-1]
    frames = sample_shape[2] if ndim == 5 else 1
    b = sample_shape[0]
    options = [1] if batch == b * frames else [f for f in range(frames, 0, -1) if tokens % f == 0]
    if batch not in (b, b * frames):
        options = []
    for f in options:
        grid = _spatial_grid(tokens // f, height, width)
        if grid is not None:
            return f, grid
    raise GuidanceError(
        f"seg: cannot infer the token grid of {tokens} query tokens (query batch {batch}) for a sample "
        f"{tuple(sample_shape)}; joint text+image tokens? pass grid=(h, w)"
    )


def _spatial_grid(tokens: int, height: int, width: int) -> tuple[int, int] | None:
    guess = math.sqrt(tokens * height / width)
    for h in sorted({max(1, math.floor(guess)), math.ceil(guess)}, key=lambda v: abs(v - guess)):
        if tokens % h == 0 and abs(math.log((h / (tokens // h)) / (height / width))) < 0.35:
            return h, tokens // h
    return None


def blur_queries(query: Tensor, sigma: float, frames: int, grid: Sequence[int]) -> Tensor:
    """Blur ``query [B, N, C]`` on its token grid: ``N = frames * prod(grid)``, row-major."""
    b, n, c = query.shape
    if frames * math.prod(grid) != n:
        raise GuidanceError(f"seg: grid {frames} x {tuple(grid)} does not hold {n} query tokens")
    x = query.reshape(b * frames, *grid, c)
    x = gaussian_blur(x, sigma, dims=range(1, 1 + len(grid)))
    return x.reshape(b, n, c)


@dataclass(frozen=True)
class BlurredQueries(_LayerPerturbation):
    """SEG's perturbation: Gaussian-blur the self-attention queries ``Q = X W_q`` on their token grid.

    Hong, "Smoothed Energy Guidance: Guiding Diffusion Models with Reduced Energy Curvature of
    Attention", arXiv:2408.00760. ``sigma = inf`` (the default, the paper's limit) replaces every
    query by the mean query. The grid follows the sample's aspect ratio unless ``grid`` is given.
    The blur acts on the output of ``to_q``, before any q-norm (SEG-SDXL blurs right after ``to_q``)."""

    sigma: float = math.inf
    grid: tuple[int, ...] | None = None

    who = "seg"

    def __call__(self, model: Any) -> contextlib.AbstractContextManager:
        return self._run(model)

    @contextlib.contextmanager
    def _run(self, model: Any) -> Iterator:
        root = self.root(model)
        layers = self.layers or default_attention_layers(root)
        candidates = {n: m for n, m in root.named_modules() if is_self_attention(n, m)}
        targets = select(root, layers, candidates, self.who, "self-attention module")
        fired = dict.fromkeys(targets, 0)
        seen: dict[str, tuple[int, ...]] = {}

        def remember(module, args, kwargs):
            sample = args[0] if args and isinstance(args[0], Tensor) else None
            for key in ("sample", "hidden_states", "x"):
                if sample is None and isinstance(kwargs.get(key), Tensor):
                    sample = kwargs[key]
            if sample is not None:
                seen["shape"] = tuple(sample.shape)

        def blur_hook(name):
            def hook(module, args, output):
                fired[name] += 1
                if self.grid is not None:
                    frames, grid = output.shape[1] // math.prod(self.grid), tuple(self.grid)
                elif "shape" not in seen:
                    raise GuidanceError("seg: no sample shape in the model call; pass grid=(h, w)")
                else:
                    frames, grid = token_grid(output.shape[1], output.shape[0], seen["shape"])
                return blur_queries(output, self.sigma, frames, grid)
            return hook

        handles = []
        try:
            handles.append(root.register_forward_pre_hook(remember, with_kwargs=True))
            for name, module in targets.items():
                handles.append(module.to_q.register_forward_hook(blur_hook(name)))
            yield
        finally:
            for handle in handles:
                handle.remove()
        _check_fired(fired, self.who, "the query projection to_q")


# -- skip-layer: blocks return their input ---------------------------------------------------------
@dataclass(frozen=True)
class SkipBlocks(_LayerPerturbation):
    """Skip-layer guidance's perturbation: each selected transformer block returns its input.

    Stability AI's SD3.5 skip-layer guidance (layers 7-9, diffusers ``pipeline_stable_diffusion_3``)
    and STG (Hyung et al., arXiv:2411.18664). Tuple-returning blocks (joint text+image streams) return
    each stream's input in the block's own output order (``None`` stays ``None``)."""

    who = "skip-layer"

    def __call__(self, model: Any) -> contextlib.AbstractContextManager:
        return self._run(model)

    @contextlib.contextmanager
    def _run(self, model: Any) -> Iterator:
        root = self.root(model)
        layers = self.layers or default_skip_layers(root)
        targets = select(root, layers, block_modules(root), self.who, "transformer block")
        fired = dict.fromkeys(targets, 0)

        def wrap(name, module, forward):
            signature = inspect.signature(forward)

            def skipped_forward(*args, **kwargs):
                fired[name] += 1
                try:
                    bound = signature.bind(*args, **kwargs).arguments
                except TypeError:
                    bound = {}
                hidden = bound.get("hidden_states", kwargs.get("hidden_states", args[0] if args else None))
                context = bound.get("encoder_hidden_states", kwargs.get("encoder_hidden_states"))
                if not isinstance(hidden, Tensor):
                    raise GuidanceError(f"skip-layer: cannot find the input hidden states of block {name}")
                # the block still runs once so its output structure is known exactly
                out = forward(*args, **kwargs)
                return _inputs_as_outputs(out, hidden, context, name, type(module).__name__)
            return skipped_forward

        with patched_forwards(targets, wrap):
            yield
        _check_fired(fired, self.who, "a call of the block")


# output order of tuple-returning blocks, used when both streams have the same shape
OUTPUT_ORDER = {
    "JointTransformerBlock": ("context", "hidden"),
    "FluxTransformerBlock": ("context", "hidden"),
    "FluxSingleTransformerBlock": ("context", "hidden"),
    "CogVideoXBlock": ("hidden", "context"),
    "HunyuanVideoTransformerBlock": ("hidden", "context"),
}


def _inputs_as_outputs(out: Any, hidden: Tensor, context: Tensor | None, name: str, kind: str = "") -> Any:
    if isinstance(out, Tensor):
        return hidden
    if not isinstance(out, (tuple, list)):
        raise GuidanceError(f"skip-layer: block {name} returned {type(out).__name__}; cannot skip it")
    mapped = []
    for item in out:
        if item is None or not isinstance(item, Tensor):
            mapped.append(item)
            continue
        is_hidden = item.shape == hidden.shape
        is_context = context is not None and item.shape == context.shape
        if is_hidden and is_context and kind in OUTPUT_ORDER and len(out) == 2:
            is_hidden = OUTPUT_ORDER[kind][len(mapped)] == "hidden"
            is_context = not is_hidden
        if is_hidden == is_context:
            raise GuidanceError(
                f"skip-layer: cannot tell which input block {name} returns for an output of shape "
                f"{tuple(item.shape)} (hidden {tuple(hidden.shape)}, context "
                f"{None if context is None else tuple(context.shape)})"
            )
        mapped.append(hidden if is_hidden else context)
    return type(out)(mapped)
