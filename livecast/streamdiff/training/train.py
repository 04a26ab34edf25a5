"""`livecast train demo`: train the demo UNet for one-step img2img/txt2img, seeded, from scratch.

1. Build the untrained demo: the random demo's text encoder, tokenizer and near-identity tiny
   VAE (seeded), and a fresh UNet of `demo_model.UNET` whose output starts at the mean target.
2. Make the data bank: procedural scenes and noise scenes (`scenes`), each stylized by every
   filter (`styles`), all encoded once by the frozen tiny VAE. Prompts are encoded once too.
3. Train the UNet alone at the timesteps streams visit (trailing schedules of 1-4 steps):
   x_t = alpha * z_in + beta * noise, x0 = unet(x_t, t, prompt) (an x0 model), loss =
   |x0 - z_style|^2. Below t=999, z_in is the scene's latent, or (30% of the time) the scene
   already stylized in some style: a later step of a 2-4 step schedule keeps the prompt's style,
   and after a prompt change it switches to the new one. At t=999, x_t is beta * noise, as a
   txt2img stream starts, and the target is a stylized colour field made from that noise, so a
   seed becomes a stylized picture.
4. Save a diffusers folder (fp16 safetensors) plus `livecast_demo.json` (recipe, loss log).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, EulerDiscreteScheduler, UNet2DConditionModel

from ..codec import LatentCodec
from ..demo import DEMO_SEED, build_random_components
from ..schedule import trailing_timesteps
from . import demo_model, scenes, styles

# Timesteps of the trailing 1-4 step schedules, and how often each is drawn: the defaults
# (2 steps at strength 0.5: t=499; the Stylize page's 4 steps: 499 and 249) and txt2img's 999.
TIMESTEPS = (999, 749, 666, 499, 332, 249)
TIMESTEP_WEIGHTS = (0.22, 0.1, 0.06, 0.3, 0.08, 0.24)
assert set(TIMESTEPS) == {int(t) for n in range(1, 5) for t in trailing_timesteps(1000, n)}

FULL = dict(scenes=2048, noises=512, steps=8000, batch=32, size=128, lr=2e-3, readout_batches=32)
QUICK = dict(scenes=24, noises=16, steps=20, batch=8, size=128, lr=2e-3, readout_batches=2)


def build_untrained(seed: int = DEMO_SEED) -> dict[str, Any]:
    """Step 1: the demo's frozen parts and a fresh UNet (conv_out zeroed; `train` sets its bias)."""
    parts = build_random_components("demo", seed=seed)
    parts.pop("vae")  # the trained demo ships the tiny VAE only
    parts.pop("unet")
    normalize_latents_(parts["tiny_vae"], seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **demo_model.UNET)
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
    parts["unet"] = unet
    parts["scheduler"] = EulerDiscreteScheduler(**demo_model.SCHEDULER)
    return parts


@torch.no_grad()
def normalize_latents_(vae, seed: int, num: int = 32, size: int = 128) -> None:
    """Make the near-identity tiny VAE's latents zero-mean, unit-variance, as SD's are.

    Its raw latents are a thumbnail of the frame plus a per-channel offset; scaled as they are,
    the offset is most of the variance, so noise at t=499 drowns the picture. The encoder's last
    bias takes the mean off (the decoder's first convolution adds it back, through the decoder's
    soft clamp, which is near-linear there) and `scaling_factor` brings the rest to unit variance.
    """
    rng = np.random.default_rng(seed + 2)
    images = torch.from_numpy(np.stack([scenes.scene(rng, size) for _ in range(num)])).permute(0, 3, 1, 2)
    raw = vae.encode(images * 2 - 1, return_dict=False)[0]  # (N, C, h, w)
    mean = raw.mean((0, 2, 3))
    std = float((raw - mean.view(1, -1, 1, 1)).std())
    vae.encoder.layers[-1].bias.sub_(mean)
    first = vae.decoder.layers[0]
    first.bias.add_(torch.einsum("ocij,c->o", first.weight, mean))
    vae.register_to_config(scaling_factor=round(1.0 / std, 4))
    # The near-identity decoder tints everything green; its last convolution is linear in its
    # 3x3 input patches, so solve it (ridge regression) to give the frame's own colours back.
    last = vae.decoder.layers[-1]
    captured = {}
    hook = last.register_forward_pre_hook(lambda _m, args: captured.update(x=args[0]))
    try:
        vae.decode(vae.encode(images * 2 - 1, return_dict=False)[0], return_dict=False)
    finally:
        hook.remove()
    k = last.kernel_size[0]
    patches = F.unfold(captured["x"], k, padding=k // 2).transpose(1, 2).flatten(0, 1)
    features = torch.cat([patches, torch.ones(patches.shape[0], 1)], 1).double()
    targets = images.permute(0, 2, 3, 1).flatten(0, 2).double()  # the decoder's output is in [0, 1]
    gram = features.T @ features + 1e-4 * features.shape[0] * torch.eye(features.shape[1]).double()
    solution = torch.linalg.solve(gram, features.T @ targets)
    last.weight.copy_(solution[:-1].T.reshape(last.weight.shape).float())
    last.bias.copy_(solution[-1].float())


def _encode(codec: LatentCodec, images: list[np.ndarray], batch: int = 32) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        chunk = torch.from_numpy(np.stack(images[i:i + batch])).permute(0, 3, 1, 2) * 2 - 1
        out.append(codec.encode(chunk))
    return torch.cat(out)


def make_bank(parts: dict[str, Any], num_scenes: int, num_noises: int, size: int, seed: int,
              progress=None) -> dict[str, torch.Tensor]:
    """Step 2: latents of every scene and of its stylizations, (N, 1 + styles, C, h, w)."""
    codec = LatentCodec(parts["tiny_vae"], torch.float32)
    rng = np.random.default_rng(seed)
    filters = list(styles.STYLES.values())
    latent = size // codec.downscale

    def stylized(images: list[np.ndarray]) -> torch.Tensor:
        rows = []
        for image in images:
            rows += [image] + [f(image) for f in filters]
            if progress is not None:
                progress.update(1)
        latents = _encode(codec, rows, batch=64)  # big batches: encoding is most of the cost
        return latents.view(len(images), 1 + len(filters), *latents.shape[1:])

    scene_images = [scenes.scene(rng, size) for _ in range(num_scenes)]
    noise = torch.from_numpy(rng.standard_normal((num_noises, codec.latent_channels, latent, latent))
                             .astype(np.float32))
    noise_images = [scenes.noise_scene(n.numpy(), size) for n in noise]
    return {"scenes": stylized(scene_images), "noise": noise, "noise_scenes": stylized(noise_images)}


def encode_prompts(parts: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """All training prompts' embeddings (P, L, D) and, per style, the indices of its prompts."""
    texts, index = [], []
    for style in styles.STYLES:
        prompts = styles.prompts_for(style)
        index.append(torch.arange(len(texts), len(texts) + len(prompts)))
        texts += prompts
    tok = parts["tokenizer"](texts, padding="max_length", truncation=True,
                             max_length=parts["tokenizer"].model_max_length, return_tensors="pt")
    with torch.no_grad():
        embeds = parts["text_encoder"](tok.input_ids)[0]
    return embeds, index


def sample_batch(bank: dict[str, torch.Tensor], embeds: torch.Tensor, prompt_index: list[torch.Tensor],
                 ac: torch.Tensor, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One training batch: (x_t, t, prompt embeddings, target x0)."""
    scene_lat, noise, noise_lat = bank["scenes"], bank["noise"], bank["noise_scenes"]
    num_styles = scene_lat.shape[1] - 1
    t_choices = torch.tensor(TIMESTEPS)
    t_probs = torch.tensor(TIMESTEP_WEIGHTS)
    t = t_choices[torch.multinomial(t_probs, batch, replacement=True, generator=gen)]
    k = torch.randint(0, num_styles, (batch,), generator=gen)
    from_noise = (t == 999) | (torch.rand(batch, generator=gen) < 0.2)
    i = torch.randint(0, scene_lat.shape[0], (batch,), generator=gen)
    j = torch.randint(0, noise_lat.shape[0], (batch,), generator=gen)
    source = torch.where(from_noise.view(-1, 1, 1, 1, 1), noise_lat[j], scene_lat[i])
    target = source[torch.arange(batch), k + 1]
    # A later step of a 2-4 step schedule sees the scene already stylized: in the prompt's own
    # style it keeps it; in another (the frames in flight when the prompt changed) it switches.
    # "photo" (k = 0) cannot undo a style, so it only ever sees the scene itself.
    styled = (torch.rand(batch, generator=gen) < 0.3) & (k > 0) & (t < 999)
    other = torch.randint(1, num_styles, (batch,), generator=gen)
    z_in = torch.where(styled.view(-1, 1, 1, 1), source[torch.arange(batch), other + 1], source[:, 0])
    eps = torch.randn(z_in.shape, generator=gen)
    eps = torch.where((t == 999).view(-1, 1, 1, 1), noise[j], eps)  # the scene's own noise
    flip = torch.rand(batch, generator=gen) < 0.5
    z_in, target, eps = (torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x) for x in (z_in, target, eps))
    a = ac[t].sqrt().view(-1, 1, 1, 1)
    b = (1 - ac[t]).sqrt().view(-1, 1, 1, 1)
    # txt2img starts from beta * noise (the zero latent noised, as the pipeline does); img2img
    # noises the input latent
    x_t = torch.where((t == 999).view(-1, 1, 1, 1), b * eps, a * z_in + b * eps)
    p = torch.stack([idx[torch.randint(0, len(idx), (1,), generator=gen)][0]
                     for idx in (prompt_index[int(s)] for s in k)])
    return x_t, t, embeds[p], target


def train(parts: dict[str, Any], bank: dict[str, torch.Tensor], *, steps: int, batch: int, lr: float,
          seed: int, time_limit: float | None = None, progress=None, log=None) -> dict[str, Any]:
    """Step 3. Returns the loss log; `time_limit` (seconds) stops early, recording where."""
    unet = parts["unet"].train().requires_grad_(True)
    embeds, prompt_index = encode_prompts(parts)
    ac = DDPMScheduler.from_config(parts["scheduler"].config).alphas_cumprod
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4, betas=(0.9, 0.99))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    with torch.no_grad():  # start at the mean target, so the first steps learn the picture
        unet.conv_out.bias.copy_(bank["scenes"][:, 1:].mean((0, 1, 3, 4)))
    history, start = [], time.monotonic()
    for step in range(steps):
        x_t, t, emb, target = sample_batch(bank, embeds, prompt_index, ac, batch, gen)
        x0 = unet(x_t, t.float(), encoder_hidden_states=emb).sample
        loss = F.mse_loss(x0, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        record = {"step": step + 1, "loss": round(loss.item(), 5), "lr": round(sched.get_last_lr()[0], 6),
                  "elapsed_s": round(time.monotonic() - start, 1)}
        history.append(record)
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
        if progress is not None:
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            progress.update(1)
        if time_limit is not None and time.monotonic() - start > time_limit:
            break
    unet.eval().requires_grad_(False)
    return {"steps_run": len(history), "seconds": round(time.monotonic() - start, 1), "history": history}


@torch.no_grad()
def fit_readout_(parts: dict[str, Any], bank: dict[str, torch.Tensor], *, batches: int, batch: int, seed: int,
                 ridge: float = 1e-3, progress=None) -> None:
    """Step 3b: solve the UNet's output convolution in closed form (weighted ridge regression).

    conv_out is linear in its 3x3 input patches, so on the batches of `sample_batch` the x0 loss
    |conv_out(f) - target|^2 is least squares in its weights: a few hundred gradient steps leave
    it short of that optimum, and solving it costs only forward passes.
    """
    unet, conv_out = parts["unet"].eval(), parts["unet"].conv_out
    embeds, prompt_index = encode_prompts(parts)
    ac = DDPMScheduler.from_config(parts["scheduler"].config).alphas_cumprod
    gen = torch.Generator().manual_seed(seed + 3)
    k = conv_out.kernel_size[0]
    size = conv_out.in_channels * k * k + 1
    gram = torch.zeros(size, size, dtype=torch.float64)
    rhs = torch.zeros(size, conv_out.out_channels, dtype=torch.float64)
    captured = {}
    hook = conv_out.register_forward_pre_hook(lambda _m, args: captured.update(x=args[0]))
    try:
        for _ in range(batches):
            x_t, t, emb, target = sample_batch(bank, embeds, prompt_index, ac, batch, gen)
            unet(x_t, t.float(), encoder_hidden_states=emb)
            patches = F.unfold(captured["x"], k, padding=k // 2).transpose(1, 2)  # (B, hw, in*k*k)
            rows = torch.cat([patches, torch.ones(*patches.shape[:2], 1)], -1).flatten(0, 1).double()
            gram += rows.T @ rows
            rhs += rows.T @ target.flatten(2).transpose(1, 2).flatten(0, 1).double()
            if progress is not None:
                progress.update(1)
    finally:
        hook.remove()
    gram += ridge * gram.diagonal().mean() * torch.eye(size, dtype=torch.float64)
    solution = torch.linalg.solve(gram, rhs)
    conv_out.weight.copy_(solution[:-1].T.reshape(conv_out.weight.shape).float())
    conv_out.bias.copy_(solution[-1].float())


def save(parts: dict[str, Any], out: Path, recipe: dict[str, Any], result: dict[str, Any]) -> None:
    """Step 4: a diffusers folder in fp16 (UNet, text encoder, tokenizer, scheduler, tiny VAE)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "text_encoder", "tiny_vae"):
        module = parts[name]
        torch.nn.Module.to(module, dtype=torch.float16)
        module.save_pretrained(out / name, safe_serialization=True)
        torch.nn.Module.to(module, dtype=torch.float32)
    parts["tokenizer"].save_pretrained(out / "tokenizer")
    parts["scheduler"].save_pretrained(out / "scheduler")
    history = result["history"]
    every = max(1, len(history) // 200)  # a compact loss curve ships with the weights
    meta = {"format": "livecast-demo/1", "label": demo_model.LABEL, "recipe": recipe,
            "steps_run": result["steps_run"], "train_seconds": result["seconds"],
            "final_loss": float(np.mean([h["loss"] for h in history[-20:]])) if history else None,
            "styles": list(styles.STYLES), "loss_curve": history[::every],
            "data": "procedural scenes generated in code (livecast.streamdiff.training.scenes); "
                    "no images from outside the package"}
    (out / "livecast_demo.json").write_text(json.dumps(meta, indent=1) + "\n")


def held_out_frames(size: int = 256) -> dict[str, np.ndarray]:
    """Frames no training run sees: a procedural scene from another seed and a camera-like one."""
    return {"procedural": scenes.scene(np.random.default_rng(HELD_OUT_SEED), size),
            "camera": scenes.person_frame(size)}


HELD_OUT_SEED = 424242


def evaluate_folder(path: Path) -> dict[str, Any]:
    from ..pipeline import StreamPipeline
    from .metrics import evaluate

    pipe = StreamPipeline.from_pretrained(str(path), tiny_vae=str(Path(path) / "tiny_vae"), resolution=256)
    return evaluate(pipe, held_out_frames(), seed=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecast train demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["demo"], help="what to train (only the demo model)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds): checks the recipe, "
                        "makes unusable weights")
    for key, value in FULL.items():
        parser.add_argument(f"--{key}", type=type(value), default=None,
                            help=f"default {value} ({QUICK[key]} with --quick)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="stop training after this many seconds (the log says where)")
    parser.add_argument("--out", type=Path, default=demo_model.WEIGHTS_DIR,
                        help=f"output folder (default: the shipped weights, {demo_model.WEIGHTS_DIR})")
    parser.add_argument("--evaluate", action="store_true",
                        help="only score the weights in --out (structure and style, held-out frames)")
    args = parser.parse_args(argv[1:] if argv and argv[0] == "train" else argv)
    from tqdm import tqdm

    if args.evaluate:
        print(json.dumps(evaluate_folder(args.out), indent=1))
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = dict(QUICK if args.quick else FULL)
    for key in FULL:
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    recipe["seed"] = args.seed
    started = time.monotonic()
    torch.manual_seed(args.seed)
    parts = build_untrained(args.seed)
    with tqdm(total=recipe["scenes"] + recipe["noises"], desc="data", unit="scene") as bar:
        bank = make_bank(parts, recipe["scenes"], recipe["noises"], recipe["size"], args.seed, bar)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "train_log.jsonl", "w") as log, \
            tqdm(total=recipe["steps"], desc="train", unit="step") as bar:
        result = train(parts, bank, steps=recipe["steps"], batch=recipe["batch"], lr=recipe["lr"],
                       seed=args.seed, time_limit=args.time_limit, progress=bar, log=log)
    (args.out / "train_log.jsonl").unlink()  # the curve is kept, thinned, in livecast_demo.json
    with tqdm(total=recipe["readout_batches"], desc="readout", unit="batch") as bar:
        fit_readout_(parts, bank, batches=recipe["readout_batches"], batch=recipe["batch"], seed=args.seed,
                     progress=bar)
    recipe["time_limit"] = args.time_limit
    save(parts, args.out, recipe, result)
    total = time.monotonic() - started
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"trained {result['steps_run']}/{recipe['steps']} steps in {result['seconds']:.0f} s "
          f"({total:.0f} s in all); final loss {json.loads((args.out / 'livecast_demo.json').read_text())['final_loss']:.4f}; "
          f"{size / 1e6:.1f} MB in {args.out}")
    return 0
