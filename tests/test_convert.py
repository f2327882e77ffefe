"""`chameleon-serve convert`: Meta <-> HF through the real command line, same model after every hop."""
import json

import pytest
import torch

from chameleon_serve.cli import main
from chameleon_serve.model.loading import load_checkpoint
from chameleon_serve.testing import write_random_checkpoint

TOKENS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]])


def logits(path, **kw):
    loaded = load_checkpoint(path, device="cpu", **kw)
    with torch.no_grad():
        return loaded, loaded.model.logits(loaded.model(TOKENS))


def test_meta_to_sharded_hf_and_back_to_two_shard_meta_keeps_the_model(tmp_path, capsys):
    src = write_random_checkpoint(tmp_path / "meta", format="meta", num_kv_heads=2, swin_norm=True)
    original, expected = logits(src)

    assert main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf", "--shards", "2"]) == 0
    assert "wrote hf checkpoint" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "hf/model.safetensors.index.json").read_text())["weight_map"]) > 0
    hf, hf_logits = logits(tmp_path / "hf")
    assert torch.equal(hf_logits, expected) and hf.config.swin_norm

    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--to", "meta", "--model-parallel", "2"]) == 0
    assert (tmp_path / "back/models/7b/consolidated.01.pth").is_file()
    back, back_logits = logits(tmp_path / "back")
    assert torch.equal(back_logits, expected)
    assert back.config == original.config and back.vqgan.has_decoder


def test_vqgan_option_adds_a_decoder_to_an_hf_checkpoint(tmp_path):
    hf = write_random_checkpoint(tmp_path / "hf", with_vq_decoder=False)
    meta = write_random_checkpoint(tmp_path / "meta", format="meta")
    assert main(["convert", str(hf), str(tmp_path / "out"), "--to", "hf", "--vqgan", str(meta / "tokenizer/vqgan.ckpt")]) == 0
    assert load_checkpoint(tmp_path / "out", device="cpu").vqgan.has_decoder


def test_stored_dtype_is_kept_unless_asked(tmp_path):
    src = write_random_checkpoint(tmp_path / "hf")
    assert main(["convert", str(src), str(tmp_path / "bf16"), "--to", "meta", "--dtype", "bfloat16"]) == 0
    shard = torch.load(tmp_path / "bf16/models/7b/consolidated.pth", weights_only=True)
    assert shard["layers.0.attention.wq.weight"].dtype == torch.bfloat16
    assert main(["convert", str(tmp_path / "bf16"), str(tmp_path / "hf2"), "--to", "hf"]) == 0
    assert json.loads((tmp_path / "hf2/config.json").read_text())["dtype"] == "bfloat16"
    assert load_checkpoint(tmp_path / "hf2", dtype="auto", device="cpu").model.norm.weight.dtype == torch.bfloat16


def test_bad_input_exits_1_with_one_clear_message(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "hf"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing: no such file or directory" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_shard_options_must_match_the_target_format(tmp_path, capsys):
    src = write_random_checkpoint(tmp_path / "hf")
    assert main(["convert", str(src), str(tmp_path / "out"), "--to", "meta", "--shards", "2"]) == 2
    assert "--shards goes with --to hf" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the two split options exclude each other
        main(["convert", str(src), str(tmp_path / "out"), "--to", "hf", "--shards", "2", "--model-parallel", "2"])
