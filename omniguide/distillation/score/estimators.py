"""Trainable estimators: VSD's and ASD's ``eps_phi``, the score of the current renders.

``kind: copy`` trains a full copy of the prior's denoiser (small priors); ``kind: lora`` trains
PEFT LoRA adapters (``rank``) on the attention projections of a copy whose base weights stay
frozen (diffusers' ``add_adapter``; the adapters start at zero, so ``eps_phi`` starts as the
prior). The estimator is a submodule of the trainer, so it is checkpointed and its gradients are
averaged by DDP; it has its own optimizer (``lr``) and its own loss (see ``objectives/vsd.py``).
Camera conditioning (ProlificDreamer's pose embedding) is not implemented.
"""

from __future__ import annotations

import copy

from torch import nn

from ...core.errors import ConfigError
from ...core.model_call import ModelCall
from ..priors import Prior

ESTIMATOR_KINDS = ("copy", "lora")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class Estimator(nn.Module):
    """A trainable denoiser of the prior's architecture (see the module docstring)."""

    def __init__(self, prior: Prior, kind: str = "lora", rank: int = 4):
        super().__init__()
        if kind not in ESTIMATOR_KINDS:
            raise ConfigError("objective.estimator", f"unknown estimator '{kind}'; valid: {', '.join(ESTIMATOR_KINDS)}")
        source = prior.call.module
        if source is None:
            raise ConfigError("objective.estimator", "the prior's denoiser is not a module; an estimator copies it")
        self.denoiser = copy.deepcopy(source)
        self.denoiser.train()
        if kind == "copy":
            self.denoiser.requires_grad_(True)
        else:
            try:
                from peft import LoraConfig
            except ImportError:
                raise ConfigError("objective.estimator", "'lora' needs the peft package (pip install peft); "
                                  "or use estimator: copy") from None
            self.denoiser.requires_grad_(False)
            self.denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS,
                                                 init_lora_weights=True))
        self.kind = kind
        self.call: ModelCall = prior.make_call(self.denoiser)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
