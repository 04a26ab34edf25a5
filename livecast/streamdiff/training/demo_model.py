"""The trained demo's architecture and where its weights live.

The UNet keeps the random demo's topology (SD's four levels, cross-attention at the middle two)
with the two deepest levels at 96 channels instead of 128 (the weights fit in 10 MB) and two
cheap additions that let a few hundred training steps learn the prompt: the pooled prompt
embedding joins the timestep embedding (`addition_embed_type="text"`) and every ResNet block
applies it as a scale and shift (`resnet_time_scale_shift="scale_shift"`, FiLM). It predicts
the clean latent itself (`prediction_type="sample"`): a one-step stylizer then never has to
reproduce the added noise pixel for pixel in order to cancel it, as epsilon and v models must.
Its noise schedule is gentler than SD's (scaled_linear to beta_end 0.005 from 0.0005): at
strength 0.5 (t=499) the input keeps alpha = 0.73 of its latent instead of 0.53, where a model
this small can still read the picture's structure.
The text encoder, tokenizer and tiny VAE are the random demo's own (seeded, shaped by
`demo_weights`); training leaves them as they are.
"""
from __future__ import annotations

from ..demo import DEMO, DEMO_WEIGHTS_DIR, TRAINED_LABEL, TURBO_SCHEDULER

WEIGHTS_DIR = DEMO_WEIGHTS_DIR
LABEL = TRAINED_LABEL

UNET = {**DEMO.unet, "block_out_channels": (32, 64, 96, 96), "addition_embed_type": "text",
        "addition_embed_type_num_heads": 8, "resnet_time_scale_shift": "scale_shift"}
SCHEDULER = {**TURBO_SCHEDULER, "prediction_type": "sample", "beta_start": 0.0005, "beta_end": 0.005}
