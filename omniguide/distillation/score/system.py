"""The score-distillation trainer: a LightningModule that renders a batch of views, computes the
objective from the frozen prior's branch predictions, and steps the scene (and, for VSD/ASD, the
estimator with its own optimizer).

* The frozen prior is *not* a submodule: it stays out of checkpoints, out of ``parameters()`` and so
  out of DDP; it is moved to the device in ``setup``. Its text encoder runs once, in ``setup``, for
  every prompt set (view prompts, negative, objective-specific ones); each step only gathers rows.
* Every step's random draws (cameras, timesteps, noise) are made for the *global* batch by a
  generator seeded with ``(seed, step)``; each rank keeps rows ``rank::world``. So ranks draw
  different cameras, 2 ranks reproduce 1 process with the same total batch, and a resumed run
  reproduces an uninterrupted one bit for bit.
* Training progress ``step / max_steps`` is the coordinate annealed values and guider schedules
  read (``GuidanceStep.progress``).
* Logged: ``grad_norm``, each objective's own terms, the estimator's loss, and the time spent in
  render, prior and update (``timings``), never the target loss as if it were an objective value.
  Logs stay on the device until the logger's steps, and non-finite terms are watched on the device
  (:class:`~omniguide.distillation.score.objectives.base.Watch`), read on log steps, before every
  checkpoint and at the end: no host sync per step, and a diverged run stops naming the step it
  diverged at before any checkpoint after it is written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning
import torch
from torch import Tensor

from ...core.branch import BranchExecutor
from ...core.guider import Guider
from ..priors import Prior
from .estimators import Estimator
from .objectives.base import Context, Draws, Objective, Watch
from .scene import VIEWS, CameraSampler, Representation, SolidBackground, render


@dataclass
class DistillSettings:
    """Training settings of :class:`DistillSystem`."""

    prompt: str
    negative_prompt: str = ""
    batch_size: int = 4          # views per step, over all ranks
    render_size: int = 32
    samples: int = 48
    lr: float = 1e-2
    seed: int = 0
    max_steps: int = 1000
    timing: bool = True


class _Steps(torch.utils.data.IterableDataset):
    def __iter__(self):
        i = 0
        while True:
            yield i
            i += 1


def gather(inputs: Any, index: Tensor) -> Any:
    """Rows ``index`` of every tensor in (nested) branch inputs."""
    if isinstance(inputs, Mapping):
        return {k: gather(v, index) for k, v in inputs.items()}
    if isinstance(inputs, Tensor):
        return inputs[index.to(inputs.device)]
    return inputs


class DistillSystem(lightning.LightningModule):
    """Score distillation of ``scene`` from ``prior`` with ``objective`` and ``guider`` (see the module docstring)."""

    def __init__(self, scene: Representation, prior: Prior, objective: Objective, guider: Guider,
                 cameras: CameraSampler, settings: DistillSettings, background: SolidBackground | None = None):
        super().__init__()
        self.scene = scene
        self.background = background if background is not None else SolidBackground()
        object.__setattr__(self, "prior", prior)        # not a submodule: out of checkpoints and DDP
        self.objective, self.guider, self.cameras, self.settings = objective, guider, cameras, settings
        self.estimator = None
        if getattr(objective, "estimator", None) in ("copy", "lora"):
            self.estimator = Estimator(prior, objective.estimator, getattr(objective, "lora_rank", 4))
        self.inputs: dict[str, dict] = {}
        self.per_view: set[str] = set()
        self.timings: list[dict[str, float]] = []
        self.watch = Watch(objective.name)
        self.last_values: dict[str, Tensor] = {}
        self._pending_estimator_state = None
        self._t: dict[str, float] = {}

    # -- prompts, encoded once ------------------------------------------------------------------
    @staticmethod
    def prompt_sets_for(prompt: str, negative: str, objective: Objective, views) -> dict[str, list[str]]:
        """Every prompt a run needs, by branch name: ``cond`` has one prompt per view (in
        :data:`VIEWS` order), ``uncond`` the negative (or ""), the objective its own (``{prompt}``
        in one means one per view), and ``view:<name>`` each view's prompt on its own (for
        guiders that use other views as negative branches, such as Perp-Neg)."""
        view_prompts = views.prompts(prompt)
        sets = {"cond": view_prompts, "uncond": [negative]}
        for name, text in objective.prompt_sets(prompt).items():
            sets[name] = [text.format(prompt=p) for p in view_prompts] if "{prompt}" in text else [text]
        for view, text in zip(VIEWS, view_prompts):
            sets[f"view:{view}"] = [text]
        return sets

    def prompt_sets(self) -> dict[str, list[str]]:
        s = self.settings
        return self.prompt_sets_for(s.prompt, s.negative_prompt, self.objective, self.cameras.views)

    def setup(self, stage: str) -> None:
        self.prior.to(self.device)
        if not self.inputs:
            sets = self.prompt_sets()
            self.inputs = self.prior.encode_prompts(sets)
            self.per_view = {name for name, texts in sets.items() if len(texts) == len(VIEWS)}
            self.guider.reset()
        self.executor = BranchExecutor(self.prior.call, None, self.prior.parameterization,
                                       noise_of=self.prior.noise_of, check_finite=False)   # the watch does

    def branch_inputs(self, views: Tensor) -> dict[str, dict]:
        out = {}
        for name, inputs in self.inputs.items():
            index = views if name in self.per_view else torch.zeros_like(views)
            out[name] = gather(inputs, index)
        return out

    # -- one step -------------------------------------------------------------------------------
    def _mark(self, key: str) -> None:
        if self.settings.timing and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._t[key] = time.perf_counter()

    def progress(self) -> float:
        return min(1.0, self.global_step / max(1, self.settings.max_steps))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        s, step = self.settings, self.global_step
        rank, world = self.global_rank, self.trainer.world_size
        gen = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        cams = self.cameras.sample(s.batch_size, gen)
        rows = slice(rank, None, world)
        local = cams.index(rows)
        self._mark("render0")
        out = render(self.scene, local, s.render_size, s.render_size, s.samples, self.background)
        self._mark("render1")
        x = self.prior.encode_image(out.rgb)
        ctx = Context(self.prior, self.guider, x, self.branch_inputs(self.cameras.views.views(local)),
                      Draws(gen, rows, s.batch_size), self.progress(), step, self.estimator, self.executor,
                      self.watch)
        result = self.objective(ctx)
        loss = result.loss if result.estimator_loss is None else result.loss + result.estimator_loss
        self._mark("prior1")
        self.last_values = {**result.values, "opacity": out.opacity.detach().mean()}
        if (step + 1) % self.trainer.log_every_n_steps == 0:
            # only on the steps the logger writes: Lightning's self.log costs about 0.2 ms a key, a few
            # percent of a 60 ms CPU iteration, and reading the values syncs the device
            self.watch.check()
            for key, value in self.last_logs.items():
                self.log(f"train/{key}", value, prog_bar=key == "grad_norm")
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        t = self._t
        if "update1" in t:
            total = now - t["start"]
            self.timings.append({"render": t["render1"] - t["render0"], "prior": t["prior1"] - t["render1"],
                                 "update": t["update1"] - t["update0"], "iteration": total})
        self._t = {"start": now}

    @property
    def last_logs(self) -> dict[str, float]:
        """The last step's logged values as floats (reading them syncs the device)."""
        values = self.last_values
        return dict(zip(values, torch.stack([v.float().cpu() for v in values.values()]).tolist())) if values else {}

    def on_train_end(self) -> None:
        self.watch.check()

    def on_before_backward(self, loss: Tensor) -> None:
        self._mark("update0")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._mark("update1")

    def on_before_optimizer_step(self, optimizer) -> None:
        """The estimator's own optimizer steps on its own gradient (DDP-averaged with the scene's)."""
        if self.estimator is None:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:          # 16-mixed: the estimator's gradients are still scaled
            inv = 1.0 / scaler.get_scale()
            for p in self.estimator.trainable():
                if p.grad is not None:
                    p.grad.mul_(inv)
        self.estimator_optimizer.step()
        self.estimator_optimizer.zero_grad(set_to_none=True)

    # -- optimizers and checkpoints ---------------------------------------------------------------
    def configure_optimizers(self):
        params = [*self.scene.parameters(), *self.background.parameters()]
        if self.estimator is not None:
            self.estimator_optimizer = torch.optim.AdamW(self.estimator.trainable(), lr=self.objective.estimator_lr)
            if self._pending_estimator_state is not None:
                self.estimator_optimizer.load_state_dict(self._pending_estimator_state)
                self._pending_estimator_state = None
        return torch.optim.Adam(params, lr=self.settings.lr, betas=(0.9, 0.99), eps=1e-15)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.watch.check()      # a diverged state is never written: the last checkpoint stays good
        # what metrics.json reports, for a run resumed at its last step (it runs no step itself)
        checkpoint["report"] = {"last_logs": self.last_logs, "timings": self.timings}
        if self.estimator is not None:
            checkpoint["estimator_optimizer"] = self.estimator_optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._pending_estimator_state = checkpoint.get("estimator_optimizer")
        report = checkpoint.get("report", {})
        self.last_values = {k: torch.tensor(v) for k, v in report.get("last_logs", {}).items()}
        self.timings = list(report.get("timings", []))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(_Steps(), batch_size=None)

    # -- reporting --------------------------------------------------------------------------------
    def timing_summary(self, skip: int = 3) -> dict[str, float]:
        """Mean seconds per iteration and the share of render, prior, update and trainer overhead."""
        rows = self.timings[skip:] or self.timings
        if not rows:
            return {}
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        total = mean["iteration"]
        overhead = total - mean["render"] - mean["prior"] - mean["update"]
        return {"seconds_per_iteration": total, "render_share": mean["render"] / total,
                "prior_share": mean["prior"] / total, "update_share": mean["update"] / total,
                "overhead_share": overhead / total, "timed_iterations": len(rows)}
