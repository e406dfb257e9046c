"""EDM-preconditioned schedulers (Stable Audio's): the noise level the adapter reads from a timestep,
and the v prediction it implies, against diffusers' own preconditioning."""

from __future__ import annotations

import math

import pytest
import torch

from omniguide.core.errors import GuidanceError
from omniguide.core.noise import NoiseSchedule
from omniguide.core.prediction import Prediction
from omniguide.core.schedulers import noise_schedule, sample_unit, scales_model_input


@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_edm_noise_level_and_v_match_diffusers_preconditioning(sigma_data):
    from diffusers import EDMDPMSolverMultistepScheduler

    scheduler = EDMDPMSolverMultistepScheduler(prediction_type="v_prediction", sigma_data=sigma_data)
    schedule = noise_schedule(scheduler)
    assert scales_model_input(scheduler) and sample_unit(scheduler) == sigma_data
    g = torch.Generator().manual_seed(0)
    for s in (0.05, 0.7, 3.0, 40.0):
        sigma = torch.tensor(s, dtype=torch.float64)
        timestep = scheduler.precondition_noise(sigma)
        noise = schedule.noise(timestep)
        x = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)           # the scheduler's VE sample
        model_input = scheduler.precondition_inputs(x, sigma)
        output = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
        denoised = scheduler.precondition_outputs(x, output, sigma)           # diffusers' x0
        x0 = Prediction(output, "v", model_input, noise).x0                   # in units of x0 / sigma_data
        torch.testing.assert_close(x0 * sigma_data, denoised, rtol=1e-9, atol=1e-9)
        assert float(noise.sigma_edm) == pytest.approx(s / sigma_data)
        assert float(noise.t) == pytest.approx(2 / math.pi * math.atan(s / sigma_data))
        torch.testing.assert_close(schedule.timestep(noise), timestep.double(), rtol=1e-9, atol=1e-9)


def test_cosine_preconditioning_is_stable_audio_tools_time():
    """CosineDPMSolver's timestep is atan(sigma) 2/pi: stable-audio-tools' t, with sigma = tan(t pi/2)."""
    schedule = NoiseSchedule.edm(1.0, "atan")
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    noise = schedule.noise(t)
    torch.testing.assert_close(noise.t, t)
    torch.testing.assert_close(noise.alpha, torch.cos(t * math.pi / 2))      # the v objective's alpha, sigma
    torch.testing.assert_close(noise.sigma, torch.sin(t * math.pi / 2))


def test_edm_epsilon_models_are_refused():
    from diffusers import EDMEulerScheduler

    with pytest.raises(GuidanceError, match="the EDM 'epsilon' output F is -v"):
        noise_schedule(EDMEulerScheduler(prediction_type="epsilon"))
