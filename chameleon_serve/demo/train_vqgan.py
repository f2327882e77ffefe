"""Trains the demo model's VQGAN image tokenizer on freshly rendered scenes.

The model is our `chameleon_serve.model.vqgan.VQModel` (taming layout, the real Chameleon block
design) at a small size. Loss: L1 + L2 reconstruction plus the VQ codebook/commitment loss; no
perceptual or GAN term, flat colours and sharp edges do not need one. Codes that go unused are
re-initialised from encoder outputs of the current batch so the whole codebook stays in play.

Run alone: python -m chameleon_serve.demo.train_vqgan --steps 200 --out runs/vqgan.pt
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from chameleon_serve.model.config import VQConfig
from chameleon_serve.model.vqgan import VQModel

from .world import random_scene, render

# 32 px images, 8x8 = 64 codes each (4x4 pixels per code): three levels (two halvings), the narrowest
# channels GroupNorm(32) allows. 64 px would cost 4x the compute on the 2-core budget of the recipe.
DEMO_VQ = VQConfig(
    resolution=32,
    base_channels=32,
    channel_multiplier=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    latent_channels=64,
    num_embeddings=256,
    embed_dim=32,
)


def to_pixels(images) -> torch.Tensor:
    """PIL images -> [B, 3, R, R] float in [-1, 1] (the reference preprocessing's scaling)."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[B, 3, R, R] in [-1, 1] -> [B, R, R, 3] uint8 (the reference postprocessing)."""
    x = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def scene_batch(rng: random.Random, n: int, resolution: int) -> torch.Tensor:
    return to_pixels([render(random_scene(rng), resolution) for _ in range(n)])


@torch.no_grad()
def reinit_dead_codes(model: VQModel, usage: torch.Tensor, z: torch.Tensor, gen: torch.Generator) -> int:
    """Moves codes that no recent batch used onto random encoder outputs (with a little noise)."""
    dead = (usage == 0).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=gen)
    new = flat[pick] + 0.01 * flat.std() * torch.randn(dead.numel(), flat.shape[1], generator=gen)
    model.quantize.embedding.weight[dead] = new
    return int(dead.numel())


def train_vqgan(
    cfg: VQConfig = DEMO_VQ,
    steps: int = 1200,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    log_path: str | None = None,
    dead_code_every: int = 25,
    log_every: int = 50,
) -> tuple[VQModel, dict]:
    """Returns the trained VQGAN and a summary (final losses, codebook usage, time)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    model = VQModel(cfg, with_decoder=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    usage = torch.zeros(cfg.num_embeddings)
    # Data-dependent codebook init: nn.Embedding's N(0, 1) rows sit far from the encoder's small outputs,
    # so nearly every latent would pick the same few codes and the decoder would learn nothing.
    with torch.no_grad():
        z0 = model.quant_conv(model.encoder(scene_batch(rng, batch_size, cfg.resolution)))
    usage[:] = 0
    reinit_dead_codes(model, usage, z0, gen)
    log = open(log_path, "w") if log_path else None
    t0, recent = time.time(), []
    for step in range(steps):
        # cosine decay to 10% with a short warmup: a fast start, then settle the codebook
        warm = min(1.0, (step + 1) / 50)
        frac = step / max(1, steps - 1)
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        x = scene_batch(rng, batch_size, cfg.resolution)
        z, codes = model.quantize_latents(x)
        z_q = model.embed_codes(codes)
        vq_loss = F.mse_loss(z_q, z.detach()) + 0.25 * F.mse_loss(z, z_q.detach())
        recon = model.decode_latents(z + (z_q - z).detach())  # straight-through, as VQModel.forward
        rec_loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        loss = rec_loss + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # dead-code re-inits can kick the loss
        opt.step()

        usage += torch.bincount(codes.flatten(), minlength=cfg.num_embeddings)
        # stop re-initialising in the last fifth so the decoder settles on a fixed codebook
        if (step + 1) % dead_code_every == 0:
            revived = reinit_dead_codes(model, usage, z.detach(), gen) if step < 0.8 * steps else 0
            in_use = int((usage > 0).sum())
            usage.zero_()
        recent.append((rec_loss.item(), vq_loss.item()))
        if (step + 1) % log_every == 0 or step == steps - 1:
            r, v = np.mean(recent, axis=0)
            recent = []
            rec = {"step": step + 1, "rec_loss": round(float(r), 5), "vq_loss": round(float(v), 5),
                   "lr": opt.param_groups[0]["lr"], "elapsed_s": round(time.time() - t0, 1)}
            if (step + 1) % dead_code_every == 0:
                rec.update(codes_in_use=in_use, revived=revived)
            print("vqgan", json.dumps(rec), flush=True)
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()
    model.eval()
    summary = {"steps": steps, "batch_size": batch_size, "final_rec_loss": rec["rec_loss"],
               "train_time_s": round(time.time() - t0, 1)}
    summary.update(evaluate_vqgan(model, seed=seed + 1000))
    if log:
        log.close()
    return model, summary


@torch.no_grad()
def evaluate_vqgan(model: VQModel, n: int = 256, seed: int = 1234) -> dict:
    """Reconstruction error on fresh scenes: mean absolute error in 0-255 pixel units, the fraction
    of pixels whose nearest palette colour survives, and how many codes these images use."""
    from .world import nearest_colours

    model.eval()
    x = scene_batch(random.Random(seed), n, model.cfg.resolution)
    codes = model.encode(x)
    out = to_uint8(model.decode(codes))
    ref = to_uint8(x)
    mae = float(np.abs(out.astype(np.float32) - ref.astype(np.float32)).mean())
    colour_ok = float((nearest_colours(out) == nearest_colours(ref)).mean())
    return {"recon_mae_255": round(mae, 3), "recon_palette_pixel_acc": round(colour_ok, 5),
            "codes_used_eval": int(codes.unique().numel())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log", default=None)
    ap.add_argument("--out", required=True, help="where to save the state dict (torch.save)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, summary = train_vqgan(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                 log_path=args.log)
    print(json.dumps(summary))
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
