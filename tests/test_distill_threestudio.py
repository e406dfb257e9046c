"""The threestudio bridge against a stand-in module that follows threestudio's documented
interface (``threestudio.register``/``find``, ``utils.base.BaseObject`` with a nested ``Config``
parsed by ``OmegaConf.structured``, guidance ``__call__(rgb, prompt_utils, elevation, azimuth,
camera_distances)`` returning ``loss_*`` terms, ``update_step``)."""

from __future__ import annotations

import importlib
import types
from dataclasses import dataclass

import pytest
import tiny_pipelines as tp
import torch
from omegaconf import OmegaConf

from omniguide.distillation.priors import prior_from_pipeline
from omniguide.distillation.registry import OBJECTIVES, build_objective
from omniguide.distillation.score import threestudio as bridge
from omniguide.distillation.score.objectives import Context, Draws


def stand_in() -> types.ModuleType:
    ts = types.ModuleType("threestudio")
    ts.__modules__ = {}

    def register(name):
        def decorator(cls):
            if name in ts.__modules__:
                raise ValueError(f"Module {name} already exists! Names of extensions conflict!")
            ts.__modules__[name] = cls
            return cls
        return decorator

    class BaseObject:
        @dataclass
        class Config:
            pass

        def __init__(self, cfg=None, *args, **kwargs):
            self.cfg = OmegaConf.structured(self.Config(**(cfg or {})))     # threestudio's parse_structured
            self.device = torch.device("cpu")
            self.configure(*args, **kwargs)

        def configure(self, *args, **kwargs):
            pass

    ts.register, ts.find = register, ts.__modules__.__getitem__
    ts.utils = types.SimpleNamespace(base=types.SimpleNamespace(BaseObject=BaseObject))
    return ts


class PromptUtils:
    """threestudio's PromptProcessorOutput.get_text_embeddings: ``cat([cond, uncond])``, one row per view."""

    def __init__(self, pipe, prompt: str, negative: str = ""):
        with torch.no_grad():
            self.cond, self.uncond = pipe.encode_prompt(prompt, "cpu", 1, True, negative)

    def get_text_embeddings(self, elevation, azimuth, camera_distances, view_dependent_prompting=True):
        b = elevation.shape[0]
        return torch.cat([self.cond.expand(b, -1, -1), self.uncond.expand(b, -1, -1)])


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd-ts")
    tp.sd().save_pretrained(folder, safe_serialization=True)
    return folder


def test_without_threestudio_nothing_is_registered_and_nothing_fails():
    assert importlib.util.find_spec("threestudio") is None
    assert bridge.register() == [] and bridge.REGISTERED == []


def test_every_objective_is_registered_under_its_threestudio_name():
    ts = stand_in()
    names = bridge.register(ts)
    assert names == [f"omniguide-{n}" for n in OBJECTIVES.names()]
    assert {"omniguide-sds", "omniguide-asd", "omniguide-sds-bridge"} <= set(ts.__modules__)
    assert bridge.register(ts) == names          # registering twice is harmless


def test_the_guidance_call_gives_the_objectives_gradient(sd_folder):
    ts = stand_in()
    bridge.register(ts)
    cfg = {"pretrained_model_name_or_path": str(sd_folder), "guider": {"name": "cfg", "scale": 7.5},
           "objective": {"weighting": "uniform"}, "trainer_max_steps": 100, "seed": 3}
    guidance = ts.find("omniguide-sds")(cfg)
    guidance.update_step(0, 40)
    pipe = bridge.load_pipeline(str(sd_folder))
    prompt_utils = PromptUtils(pipe, "a red circle")
    rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    view = torch.zeros(2)
    out = guidance(rgb, prompt_utils, view, view, view + 3)
    assert {"loss_sds", "grad_norm", "min_step", "max_step", "omniguide/guided - noise"} <= set(out)
    assert out["min_step"] == 20 and out["max_step"] == 980
    out["loss_sds"].backward()
    # the same objective called directly with the same embeddings and draws
    prior = prior_from_pipeline(pipe)
    images = rgb.detach().permute(0, 3, 1, 2).requires_grad_(True)
    x = prior.encode_image(images)
    inputs = {"cond": {"encoder_hidden_states": prompt_utils.cond.expand(2, -1, -1)},
              "uncond": {"encoder_hidden_states": prompt_utils.uncond.expand(2, -1, -1)}}
    gen = torch.Generator().manual_seed(3 * 1_000_003 + 40)
    direct = build_objective({"name": "sds", "weighting": "uniform"})(
        Context(prior, guidance.guider, x, inputs, Draws(gen), 0.4, 40))
    direct.loss.backward()
    assert torch.allclose(rgb.grad.permute(0, 3, 1, 2), images.grad, atol=1e-6)
    assert rgb.grad.abs().sum() > 0


def test_asd_trains_its_estimator_inside_the_call(sd_folder):
    ts = stand_in()
    bridge.register(ts)
    guidance = ts.find("omniguide-asd")({"pretrained_model_name_or_path": str(sd_folder),
                                         "objective": {"estimator": "lora", "estimator_lr": 1e-2}})
    before = [p.detach().clone() for p in guidance.estimator.trainable()]
    assert before, "LoRA adapters are trainable"
    pipe = bridge.load_pipeline(str(sd_folder))
    rgb = torch.rand(2, 16, 16, 3).requires_grad_(True)
    out = guidance(rgb, PromptUtils(pipe, "a red circle"), torch.zeros(2), torch.zeros(2), torch.full((2,), 3.0))
    assert "omniguide/estimator_loss" in out
    after = guidance.estimator.trainable()
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
