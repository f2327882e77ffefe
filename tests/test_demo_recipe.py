"""The demo-model recipe runs end to end at toy sizes in seconds, so it cannot rot: VQGAN, tokenizer,
data, transformer, HF checkpoint, model card, and the result loads and serves through the engine."""
import json
import time

import torch

from chameleon_serve.demo import recipe
from chameleon_serve.engine import Engine, EngineConfig, Finished, GenerationRequest, ImageDone, OutputMode
from chameleon_serve.model.loading import load_checkpoint
from chameleon_serve.tokenizers.prompt import ChatMessage


def test_tiny_recipe_trains_saves_loads_and_generates(tmp_path):
    torch.manual_seed(0)
    start = time.time()
    summary = recipe.run(tmp_path / "model", seed=0, settings=recipe.TINY, runs_dir=tmp_path / "runs")
    assert time.time() - start < 60
    out = tmp_path / "model"
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", "README.md"}
    # loss curves were logged, one JSON line per logged step, and the card quotes them
    vq_log = [json.loads(line) for line in (tmp_path / "runs" / "vqgan.jsonl").read_text().splitlines()]
    tf_log = [json.loads(line) for line in (tmp_path / "runs" / "transformer.jsonl").read_text().splitlines()]
    assert vq_log[-1]["step"] == recipe.TINY.vq_steps and tf_log[-1]["step"] == recipe.TINY.steps
    assert str(tf_log[-1]["loss"]) in (out / "README.md").read_text()
    assert summary["transformer"]["steps"] == recipe.TINY.steps

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "chameleon" and config["dtype"] == "float16"
    loaded = load_checkpoint(out, device="cpu")
    assert loaded.vqgan is not None and loaded.vqgan.has_decoder

    engine = Engine.from_checkpoint(out, config=EngineConfig(max_sequences=2)).start()
    try:
        prompt = engine.build_chat_prompt([ChatMessage("user", "draw a red circle on a blue background")])
        events = engine.generate(GenerationRequest(prompt_tokens=prompt, max_tokens=80, output=OutputMode.IMAGE, seed=0))
    finally:
        engine.shutdown()
    assert sum(isinstance(e, ImageDone) for e in events) == 1 and isinstance(events[-1], Finished)
