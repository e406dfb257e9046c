"""CUDA smoke check of the core: sample a tiny diffusers UNet in fp16, bf16 and fp32 with several
guiders and schedulers; every result must stay finite, on the GPU, in its dtype.

    python benchmarks/cuda_smoke.py        # needs a CUDA device; prints GPU CHECK PASSED
"""
import torch
from diffusers import UNet2DConditionModel

from omniguide import APG, CFG, PAG, CFGPlusPlus, CFGZeroStar, Interval, sample
from omniguide.core.schedulers import build_scheduler

unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
                            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32).cuda().eval()
for dtype in (torch.float16, torch.bfloat16, torch.float32):
    unet.to(dtype)
    model = lambda sample, t, encoder_hidden_states: unet(sample, t, encoder_hidden_states).sample  # noqa: E731
    c = torch.randn(2, 8, 32, device="cuda", dtype=dtype)
    u = torch.zeros_like(c)
    for guider in (CFG(5.0), APG(5.0), CFGZeroStar(5.0, space=None), CFGPlusPlus(0.6),
                   Interval(CFG(5.0), sigma=(0.3, 5.0)), PAG(5.0, 3.0, layers="mid")):
        for sched in ("ddim", "euler", "dpm++"):
            with torch.no_grad():
                noise = torch.randn(2, 4, 32, 32, device="cuda", dtype=dtype)
                out = sample(model, build_scheduler(sched), guider, noise,
                             {"cond": {"encoder_hidden_states": c}, "uncond": {"encoder_hidden_states": u}},
                             num_steps=8, axes="BCHW", progress=False)
            assert out.sample.device.type == "cuda" and out.sample.dtype == dtype, (out.sample.device, out.sample.dtype)
            assert torch.isfinite(out.sample).all(), (dtype, type(guider).__name__, sched)
        print(dtype, type(guider).__name__, "ok nfe", out.nfe, "passes", out.forward_passes, flush=True)
print("GPU CHECK PASSED")
