"""Analytic scorers and a classifier on the Gaussian-mixture testbed (the plugins of ``scorer-guidance``,
``gfcg`` and ``scale-search``; :mod:`omniguide.core.scorers`), exact and differentiable:

* ``mixture-class``      -- ``log p(y | x0)``, the clean mixture's class posterior (Bayes over components);
* ``mixture-density``    -- ``log p(x0 | y)``, the class-conditional density of the clean data;
* ``mixture-classifier`` -- logits ``log p(k | x0)`` over all classes (a perfect classifier).

Each takes the mixture's ring arguments (:class:`~omniguide.zoo.gaussian_mixture.MixtureSpec`), so a
config can name one: ``scorer: {name: mixture-class, label: 0}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.needs import CLASSIFIER, NEGATIVE, SCORER, SECOND_MODEL
from ..core.scorers import register_scorer
from .gaussian_mixture import GaussianMixture, MixtureSpec

# guider fields that hold scorer plugins
PLUGIN_FIELDS = ("scorer", "evaluator", "classifier")
# what the testbed gives the guiders that need it: a second model (the 'weak' and 'prior' branches
# of label_branches), a negative (its 'negative' branch) and the analytic scorer and classifier of
# :func:`testbed_supplies`
TESTBED_PROVIDES = (SECOND_MODEL, NEGATIVE, SCORER, CLASSIFIER)


def testbed_supplies(label: int) -> dict[str, dict]:
    """``{need: plugin config}`` for the guiders that need a scorer or a classifier of the testbed
    (``label``: the class the samples are asked to be); :func:`bind_testbed` fills in the ring."""
    return {SCORER: {"name": "mixture-class", "label": label}, CLASSIFIER: {"name": "mixture-classifier"}}


def bind_testbed(guider_cfg: dict, spec: MixtureSpec) -> dict:
    """A guider config with the testbed's ring arguments filled into its analytic scorer plugins
    (``scorer: {name: mixture-class, label: 0}`` on an 8-D testbed scores 8-D points); nested guiders too."""
    out = dict(guider_cfg)
    for key in PLUGIN_FIELDS:
        plugin = out.get(key)
        if isinstance(plugin, Mapping) and str(plugin.get("name", "")).startswith("mixture-"):
            out[key] = {**{k: getattr(spec, k) for k in ("dim", "classes", "per_class", "radius", "std", "seed")},
                        **plugin}
    if isinstance(out.get("guider"), Mapping):
        out["guider"] = bind_testbed(dict(out["guider"]), spec)
    return out


def component_log_density(mixture: GaussianMixture, x: Tensor) -> Tensor:
    """``log pi_k N(x; mu_k, s_k^2 I)`` for ``x [B, D]`` -> ``[B, K]`` (differentiable in ``x``)."""
    x = x.double() if x.dtype != torch.float64 else x
    var = mixture.stds.pow(2).reshape(1, -1).to(x.device)
    diff = x.unsqueeze(1) - mixture.means.to(x.device).unsqueeze(0)
    return (mixture.weights.log().to(x.device).reshape(1, -1) - 0.5 * diff.pow(2).sum(-1) / var
            - 0.5 * mixture.dim * (2 * math.pi * var).log())


def class_log_posterior(mixture: GaussianMixture, x: Tensor) -> Tensor:
    """``log p(k | x)`` for every class ``k`` (columns in ``mixture.classes`` order) -> ``[B, K]``."""
    comp = component_log_density(mixture, x)
    per_class = torch.stack([comp[:, mixture.labels == k].logsumexp(dim=1) for k in mixture.classes], dim=1)
    return per_class - comp.logsumexp(dim=1, keepdim=True)


@dataclass
class _MixtureScorer(MixtureSpec):
    label: int = 0
    mixture_override: GaussianMixture | None = field(default=None, repr=False)

    def __post_init__(self):
        self._mixture = self.mixture_override if self.mixture_override is not None else self.mixture()
        if self.label not in self._mixture.classes:
            raise ValueError(f"label {self.label} is not a class of the mixture (classes: {self._mixture.classes})")

    def get_mixture(self) -> GaussianMixture:
        return self._mixture

    def config(self) -> dict:
        return {"name": self.name, **{k: getattr(self, k) for k in ("dim", "classes", "per_class", "radius", "std",
                                                                     "seed", "label")}}


@register_scorer("mixture-class")
@dataclass
class MixtureClassScorer(_MixtureScorer):
    """``log p(label | x0)`` under the clean mixture."""

    name = "mixture-class"

    def __call__(self, x0: Tensor) -> Tensor:
        mixture = self.get_mixture()
        return class_log_posterior(mixture, x0)[:, mixture.classes.index(self.label)].to(x0.dtype)


@register_scorer("mixture-density")
@dataclass
class MixtureDensityScorer(_MixtureScorer):
    """``log p(x0 | label)`` of the clean class-conditional mixture."""

    name = "mixture-density"

    def __call__(self, x0: Tensor) -> Tensor:
        mixture = self.get_mixture()
        comp = component_log_density(mixture, x0)[:, mixture.labels == self.label]
        prior = math.log(float(mixture.weights[mixture.labels == self.label].sum()))
        return (comp.logsumexp(dim=1) - prior).to(x0.dtype)


@register_scorer("mixture-classifier")
@dataclass
class MixtureClassifier(_MixtureScorer):
    """Class logits ``log p(k | x0)`` (a perfect classifier of the clean data); ``label`` is unused."""

    name = "mixture-classifier"

    def __call__(self, x0: Tensor) -> Tensor:
        return class_log_posterior(self.get_mixture(), x0).to(x0.dtype)
