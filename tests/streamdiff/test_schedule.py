"""Timesteps and coefficients against diffusers' schedulers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler, LCMScheduler

from livecast.streamdiff.config import StreamParams
from livecast.streamdiff.demo import TURBO_SCHEDULER
from livecast.streamdiff.schedule import build_plan, draw_noise, trailing_timesteps


@pytest.mark.parametrize("steps", [1, 2, 4, 50])
def test_trailing_timesteps_match_euler_trailing(steps):
    euler = EulerDiscreteScheduler(**TURBO_SCHEDULER)
    euler.set_timesteps(steps)
    assert trailing_timesteps(1000, steps).tolist() == euler.timesteps.long().tolist()


def test_lcm_50_step_grid_and_scalings_match_lcm_scheduler():
    lcm = LCMScheduler(**{k: v for k, v in TURBO_SCHEDULER.items() if k != "timestep_spacing"})
    lcm.set_timesteps(50)
    assert trailing_timesteps(1000, 50).tolist() == lcm.timesteps.tolist()
    params = StreamParams(num_inference_steps=50, t_index_list=(0, 16, 32, 45, 49), schedule="lcm")
    ac = DDPMScheduler.from_config(lcm.config).alphas_cumprod
    plan = build_plan(params, False, ac, draw_noise(0, 5, (4, 2, 2), torch.device("cpu")))
    for i, t in enumerate(plan.timesteps.long().tolist()):
        c_skip, c_out = lcm.get_scalings_for_boundary_condition_discrete(t)
        assert plan.c_skip[i].item() == pytest.approx(c_skip, rel=1e-5, abs=1e-12)
        assert plan.c_out[i].item() == pytest.approx(c_out, rel=1e-5)
        assert plan.alpha[i].item() == pytest.approx(ac[t].sqrt().item(), rel=1e-6)
        assert plan.beta[i].item() == pytest.approx((1 - ac[t]).sqrt().item(), rel=1e-6)


@pytest.mark.parametrize("steps,strength,expected", [(2, 0.5, [499]), (1, 1.0, [999]),
                                                     (4, 0.5, [499, 249]), (4, 1.0, [999, 749, 499, 249])])
def test_strength_selects_diffusers_img2img_steps(steps, strength, expected):
    euler = EulerDiscreteScheduler(**TURBO_SCHEDULER)
    euler.set_timesteps(steps)
    init = min(int(steps * strength), steps)
    assert euler.timesteps[steps - init:].long().tolist() == expected
    params = StreamParams(num_inference_steps=steps, strength=strength)
    all_steps = trailing_timesteps(1000, steps)
    assert all_steps[list(params.step_indices(txt2img=False))].tolist() == expected
    assert all_steps[list(params.step_indices(txt2img=True))].tolist() == all_steps.tolist()


def test_noise_slot_zero_is_the_generators_first_draw():
    noise = draw_noise(42, 3, (4, 8, 8), torch.device("cpu"))
    first = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(42))
    assert torch.equal(noise[:1], first)
    assert not torch.equal(noise[0], noise[1])
    assert np.isclose(noise.std().item(), 1.0, atol=0.2)
