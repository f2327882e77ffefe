"""Trains the demo model's early-fusion transformer (our `Transformer`, the real Chameleon architecture).

Chameleon's stability recipe at a small scale: QK-norm (built into the model), z-loss
(1e-5 * logsumexp(logits)^2, keeps the softmax normaliser near 1), dropout, AdamW with weight decay 0.1
on the matrices, linear warmup then cosine decay. The loss covers the assistant's answer only (its
text, image tokens, image delimiters and closing end-of-turn), never the prompt.
"""
from __future__ import annotations

import json
import math
import random
import time

import torch
import torch.nn.functional as F

from chameleon_serve.model.config import ChameleonConfig, VQConfig
from chameleon_serve.model.transformer import Transformer

# Sizes of the shipped model. Context 512 leaves room for a follow-up turn; training sequences are < 200.
DEMO_SHAPE = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=512)


def make_config(vocab_size: int, vq: VQConfig, **overrides) -> ChameleonConfig:
    return ChameleonConfig(vocab_size=vocab_size, vq=vq, **{**DEMO_SHAPE, **overrides})


def length_batches(lengths: list[int], batch_size: int, rng: random.Random, window: int = 8) -> list[list[int]]:
    """One epoch of batches: shuffle, then sort each window of `window` batches by length so a batch's
    rows are of similar length (little padding) while batches still mix kinds of example."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    span = batch_size * window
    for i in range(0, len(order), span):
        chunk = sorted(order[i : i + span], key=lengths.__getitem__)
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(data: list[tuple[torch.Tensor, int]], idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> inputs [B, T], targets [B, T] with -100 on the prompt and on padding (right-padded, so causal
    attention never lets a real token see a pad)."""
    T = max(data[i][0].numel() for i in idx) - 1
    inputs = torch.full((len(idx), T), pad_id, dtype=torch.long)
    targets = torch.full((len(idx), T), -100, dtype=torch.long)
    for row, i in enumerate(idx):
        ids, prompt_len = data[i]
        n = ids.numel() - 1
        inputs[row, :n] = ids[:-1]
        targets[row, prompt_len - 1 : n] = ids[prompt_len:]  # position t predicts token t+1
    return inputs, targets


def loss_fn(model: Transformer, inputs: torch.Tensor, targets: torch.Tensor, z_loss: float, image_token: torch.Tensor):
    """-> (total loss, cross-entropy, {text_ce, image_ce}); logits only at the answer positions."""
    hidden = model(inputs)
    keep = targets != -100
    logits = model.logits(hidden[keep]).float()  # [N, V]
    tgt = targets[keep]
    ce_each = F.cross_entropy(logits, tgt, reduction="none")
    ce = ce_each.mean()
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    is_img = image_token[tgt]
    parts = {"text_ce": ce_each[~is_img].mean().item() if (~is_img).any() else float("nan"),
             "image_ce": ce_each[is_img].mean().item() if is_img.any() else float("nan")}
    return ce + z_loss * z, ce, parts


def param_groups(model: Transformer, weight_decay: float) -> list[dict]:
    """Decay the projection and embedding matrices; never norms (QK-norm weights are 2-D but are norms)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "norm" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_transformer(
    cfg: ChameleonConfig,
    data: list[tuple[torch.Tensor, int]],
    image_token: torch.Tensor,  # [vocab] bool: which ids are image tokens (for the loss breakdown)
    pad_id: int,
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 2e-3,
    min_lr_frac: float = 0.1,
    warmup: int = 100,
    weight_decay: float = 0.1,
    dropout: float = 0.05,
    z_loss: float = 1e-5,
    grad_clip: float = 1.0,
    seed: int = 0,
    log_path: str | None = None,
    log_every: int = 25,
) -> tuple[Transformer, dict]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = Transformer(cfg, dropout=dropout)
    # GPT-2 style init: small normal weights, residual projections scaled down by depth.
    for name, p in model.named_parameters():
        if p.dim() == 2 and "norm" not in name:
            std = 0.02 / math.sqrt(2 * cfg.num_hidden_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            torch.nn.init.normal_(p, std=std)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    lengths = [ids.numel() for ids, _ in data]
    batches: list[list[int]] = []
    log = open(log_path, "w") if log_path else None
    t0, window, tokens_seen, epochs = time.time(), [], 0, 0
    history = []
    for step in range(steps):
        # linear warmup, then cosine down to min_lr_frac * lr
        if step < warmup:
            cur = lr * (step + 1) / warmup
        else:
            frac = (step - warmup) / max(1, steps - warmup)
            cur = lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cur
        if not batches:
            batches = length_batches(lengths, batch_size, rng)
            epochs += 1
        inputs, targets = collate(data, batches.pop(), pad_id)
        loss, ce, parts = loss_fn(model, inputs, targets, z_loss, image_token)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        tokens_seen += inputs.numel()
        window.append((ce.item(), parts["text_ce"], parts["image_ce"]))
        if (step + 1) % log_every == 0 or step == steps - 1:
            mean = [sum(v for v in col if v == v) / max(1, sum(1 for v in col if v == v)) for col in zip(*window)]
            rec = {"step": step + 1, "loss": round(mean[0], 4), "text_ce": round(mean[1], 4),
                   "image_ce": round(mean[2], 4), "lr": round(cur, 6), "epoch": epochs,
                   "tokens": tokens_seen, "elapsed_s": round(time.time() - t0, 1)}
            window = []
            history.append(rec)
            print("transformer", json.dumps(rec), flush=True)
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()
    model.eval()
    if log:
        log.close()
    summary = {"steps": steps, "batch_size": batch_size, "examples": len(data), "epochs": epochs,
               "tokens_seen": tokens_seen, "train_time_s": round(time.time() - t0, 1),
               "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"],
               "final_text_ce": history[-1]["text_ce"], "final_image_ce": history[-1]["image_ce"],
               "parameters": sum(p.numel() for p in model.parameters())}
    return model, summary
