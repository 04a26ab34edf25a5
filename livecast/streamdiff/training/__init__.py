"""`livecast train demo`: the demo model's weights, rebuilt from scratch on procedural scenes.

- `scenes`: seeded procedural frames (shapes, gradients, lit spheres, test cards, text, stripes).
- `styles`: one classical stylization filter per style prompt (the training targets).
- `demo_model`: the trained demo's architecture and the folder its weights ship in.
- `train`: the training loop and the command (`main`).
"""
