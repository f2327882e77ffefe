"""Checkpoint variants seen in the wild: older HF configs and real training checkpoints of the VQGAN."""
import argparse
import json

import torch

from chameleon_serve.model.loading import load_checkpoint
from chameleon_serve.testing import write_random_checkpoint


class LightningCallbackState:
    """Something a training checkpoint pickles besides tensors (defined here, so never importable on load)."""

    def __init__(self):
        self.best_model_path = "/cluster/ckpt/epoch=3.ckpt"


def logits(path, tokens=(0, 5, 9, 14, 3)):
    model = load_checkpoint(path).model
    with torch.no_grad():
        return model.logits(model(torch.tensor([tokens])))


def test_older_top_level_rope_theta_config_loads_like_rope_parameters(tmp_path):
    path = write_random_checkpoint(tmp_path / "ckpt", format="hf", init_std=0.3)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 50000.0}
    config_file.write_text(json.dumps(config))
    expected = logits(path)
    # facebook/chameleon-7b's config.json style: a top-level rope_theta and no rope_parameters
    config.pop("rope_parameters")
    config["rope_theta"] = 50000.0
    config_file.write_text(json.dumps(config))
    assert load_checkpoint(path).config.rope_theta == 50000.0
    torch.testing.assert_close(logits(path), expected, rtol=0, atol=0)
    config["rope_theta"] = 10000.0  # and the value matters
    config_file.write_text(json.dumps(config))
    assert not torch.allclose(logits(path), expected)


def test_a_lightning_style_vqgan_ckpt_loads_its_weights_and_ignores_the_rest(tmp_path):
    path = write_random_checkpoint(tmp_path / "meta", format="meta")
    ckpt_file = path / "tokenizer" / "vqgan.ckpt"
    state = torch.load(ckpt_file, weights_only=True)["state_dict"]
    expected = {k: v.clone() for k, v in state.items()}
    training = {
        "state_dict": {**state, "loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4),
                       "loss.perceptual_loss.net.slice1.0.bias": torch.randn(4)},
        "callbacks": {"ModelCheckpoint": LightningCallbackState()},
        "hyper_parameters": argparse.Namespace(lr=4.5e-6, embed_dim=8),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}}],
        "epoch": 3,
    }
    torch.save(training, ckpt_file)
    loaded = load_checkpoint(path).vqgan
    assert loaded is not None and loaded.has_decoder
    got = loaded.state_dict()
    assert set(got) == set(expected)  # loss.* dropped, nothing missing
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
