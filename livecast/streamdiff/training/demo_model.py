"""The trained demo's architecture and where its weights live.

The UNet keeps the random demo's topology (SD's four levels, cross-attention at the middle two)
with the two deepest levels at 96 channels instead of 128 (the weights fit in 10 MB) and two
cheap additions that let a few hundred training steps learn the prompt: the pooled prompt
embedding joins the timestep embedding (`addition_embed_type="text"`) and every ResNet block
applies it as a scale and shift (`resnet_time_scale_shift="scale_shift"`, FiLM). It predicts
v (`prediction_type="v_prediction"`), which keeps the one-step x0 well conditioned at t=999.
The text encoder, tokenizer and tiny VAE are the random demo's own (seeded, shaped by
`demo_weights`); training leaves them as they are.
"""
from __future__ import annotations

from ..demo import DEMO, DEMO_WEIGHTS_DIR, TRAINED_LABEL, TURBO_SCHEDULER

WEIGHTS_DIR = DEMO_WEIGHTS_DIR
LABEL = TRAINED_LABEL

UNET = {**DEMO.unet, "block_out_channels": (32, 64, 96, 96), "addition_embed_type": "text",
        "addition_embed_type_num_heads": 8, "resnet_time_scale_shift": "scale_shift"}
SCHEDULER = {**TURBO_SCHEDULER, "prediction_type": "v_prediction"}
