"""Text tokenizer, image-token maps, the trained demo tokenizer, and the VQGAN image tokenizer."""
import io
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from chameleon_serve.model.config import CheckpointError, VQConfig
from chameleon_serve.model.vqgan import VQModel
from chameleon_serve.tokenizers import (
    ImageTokenizer,
    ImageVocab,
    TextTokenizer,
    build_tokenizer,
    image_token_name,
    load_tokenizers,
    parse_image_token,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "Hello, world!\nNew lines\n\n\tand tabs; (punctuation) [brackets] {braces} 'quotes' \"double\".",
    "Émoji: 😀 🎉 👍🏽, accents: café naïve señor, CJK: 中文字符 日本語 한국어, symbols: € £ ¥ → ∑.",
] * 20
NUM_CODES = 64
VQ = VQConfig(resolution=32, base_channels=32, channel_multiplier=(1, 2), num_res_blocks=1,
              latent_channels=32, num_embeddings=NUM_CODES, embed_dim=16)


def save(tokenizer, path):
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def contiguous(tmp_path_factory):
    tok = build_tokenizer(CORPUS, vocab_size=600, num_image_codes=NUM_CODES)
    return TextTokenizer.from_file(save(tok, tmp_path_factory.mktemp("tok") / "tokenizer.json"))


@pytest.fixture(scope="module")
def scattered(tmp_path_factory):
    tok = build_tokenizer(CORPUS, vocab_size=600, num_image_codes=NUM_CODES, image_token_layout="scattered")
    return TextTokenizer.from_file(save(tok, tmp_path_factory.mktemp("tok") / "tokenizer.json"))


# ---- image token names and maps ------------------------------------------------------------------------

def test_image_token_names():
    assert parse_image_token("IMGIMGFDZ") == 53
    assert parse_image_token("IMGIMGAZ") == 0
    assert parse_image_token("IMGIMGIBJJZ") == 8199
    assert image_token_name(53) == "IMGIMGFDZ"
    assert all(parse_image_token(image_token_name(c)) == c for c in range(1000))
    for not_image in ["IMGIMGZ", "IMGIMG53Z", "IMGIMGFD", "xIMGIMGFDZ", "<s>", "IMGIMGKZ"]:
        assert parse_image_token(not_image) is None


def test_image_vocab_from_names_not_offsets():
    vocab = {"<s>": 0, "IMGIMGCZ": 9, "hello": 1, "IMGIMGAZ": 7, "IMGIMGBZ": 3}
    iv = ImageVocab.from_vocab(vocab, num_codes=3)
    assert iv.code_to_token.tolist() == [7, 3, 9]
    assert iv.token_to_code.tolist() == [-1, -1, -1, 1, -1, -1, -1, 0, -1, 2]
    assert iv.is_image_token.nonzero().flatten().tolist() == [3, 7, 9]
    assert iv.codes_to_tokens([2, 0, 0]) == [9, 7, 7]
    assert torch.equal(iv.tokens_to_codes(torch.tensor([[3, 9]])), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="token id 1 is not an image token"):
        iv.tokens_to_codes([3, 1])
    with pytest.raises(ValueError, match="token id 99 is not an image token"):
        iv.tokens_to_codes([99])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        iv.codes_to_tokens([3])


@pytest.mark.parametrize(
    "vocab, message",
    [
        ({"IMGIMGAZ": 4, "IMGIMGCZ": 5}, "gaps"),
        ({"IMGIMGAZ": 4, "IMGIMGBZ": 5, "IMGIMGAAZ": 6}, "code 0 appears 2 times"),
        ({"IMGIMGAZ": 4, "IMGIMGBZ": 5}, "2 image tokens, but the VQ codebook has 3"),
        ({"<s>": 0}, "no image tokens"),
    ],
)
def test_image_vocab_errors(vocab, message):
    with pytest.raises(CheckpointError, match=message) as e:
        ImageVocab.from_vocab(vocab, num_codes=3, source="my/tokenizer.json")
    assert "my/tokenizer.json" in str(e.value)


def test_scattered_vocab_maps_by_name(scattered):
    iv = scattered.image_vocab
    ids = iv.code_to_token.tolist()
    assert iv.num_codes == NUM_CODES
    assert min(ids) != 4 and ids != sorted(ids), "layout must defeat offset assumptions"
    assert max(ids) - min(ids) + 1 > NUM_CODES, "image tokens must not be contiguous"
    for code, token_id in enumerate(ids):
        assert scattered.id_to_token(token_id) == image_token_name(code)
        assert iv.token_to_code[token_id] == code
    assert int(iv.is_image_token.sum()) == NUM_CODES


# ---- text tokenizer ----------------------------------------------------------------------------------------

ROUND_TRIP = [
    "plain ascii", "  leading and trailing spaces  ", "Punctuation!?;:,.()[]{}", "new\nlines\r\n\ttabs",
    "emoji 😀🎉👍🏽 👨‍👩‍👧", "中文字符 日本語 한국어", "mixed: café 😀 中文\n", "", " ", "never seen: ẞ ꙮ 𝔘𝔫𝔦",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_encode_round_trips_exactly(contiguous, text):
    assert contiguous.decode(contiguous.encode(text)) == text


def test_build_tokenizer_layout_and_speed():
    start = time.perf_counter()
    tok = build_tokenizer(CORPUS, vocab_size=600, num_image_codes=NUM_CODES)
    assert time.perf_counter() - start < 2.0
    vocab = tok.get_vocab()
    assert [vocab[n] for n in ["<s>", "</s>", "<pad>", "<unk>"]] == [0, 1, 2, 3]
    assert [vocab[image_token_name(c)] for c in range(NUM_CODES)] == list(range(4, 4 + NUM_CODES))
    assert tok.get_vocab_size() <= 600
    assert tok.encode("hi").ids and tok.encode("hi").ids[0] != vocab["<s>"]  # no BOS added by the tokenizer
    with pytest.raises(ValueError, match="too small"):
        build_tokenizer(CORPUS, vocab_size=300, num_image_codes=NUM_CODES)
    with pytest.raises(ValueError, match="image_token_layout"):
        build_tokenizer(CORPUS, vocab_size=600, num_image_codes=NUM_CODES, image_token_layout="random")


def test_text_never_encodes_to_image_tokens(scattered):
    ids = scattered.encode("IMGIMGAZ IMGIMGFDZ")
    assert not scattered.image_vocab.is_image_token[ids].any()


def test_special_tokens_by_name(scattered):
    vocab = scattered.tokenizer.get_vocab()
    s = scattered.special
    assert (s.bos, s.eos, s.boi, s.eoi) == (vocab["<s>"], vocab["</s>"], vocab["<racm3:break>"], vocab["<eoss>"])
    assert (s.pad, s.eot, s.image_placeholder) == (vocab["<pad>"], vocab["<reserved08706>"], vocab["<reserved08707>"])
    assert scattered.vocab_size == max(vocab.values()) + 1
    with pytest.raises(AttributeError):
        s.bos = 5  # frozen


def test_text_token_mask(scattered):
    mask = scattered.text_token_mask
    assert mask.shape == (scattered.vocab_size,) and mask.dtype == torch.bool
    assert not mask[scattered.image_vocab.is_image_token].any()
    s = scattered.special
    for special_id in [s.bos, s.eos, s.boi, s.eoi, s.pad, s.eot, s.image_placeholder, scattered.tokenizer.token_to_id("<unk>")]:
        assert not mask[special_id]
    assert mask[scattered.encode("The quick brown fox, café 😀")].all()
    assert int(mask.sum()) == scattered.vocab_size - NUM_CODES - 8
    assert torch.equal(scattered.text_token_ids, mask.nonzero().flatten())


def test_token_bytes_concatenate_to_utf8(contiguous):
    text = "héllo 😀 中文 <s> end"
    ids = contiguous.encode(text)
    assert b"".join(contiguous.token_bytes(i) for i in ids) == text.encode("utf-8")
    emoji_ids = contiguous.encode("😀")
    assert b"".join(contiguous.token_bytes(i) for i in emoji_ids) == "😀".encode("utf-8")


def test_missing_required_special_token_names_file_and_token(tmp_path):
    data = json.loads(build_tokenizer(CORPUS, vocab_size=600, num_image_codes=NUM_CODES).to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<racm3:break>"]
    data["model"]["vocab"].pop("<racm3:break>")
    path = tmp_path / "broken_tokenizer.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"broken_tokenizer\.json.*<racm3:break>"):
        TextTokenizer.from_file(path)


def test_unreadable_tokenizer_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        TextTokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "garbage.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="garbage.json"):
        TextTokenizer.from_file(bad)


# ---- image tokenizer ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_tokenizer(scattered):
    torch.manual_seed(0)
    return ImageTokenizer(VQModel(VQ), scattered.image_vocab)


def test_preprocess_blends_transparency_onto_white(image_tokenizer):
    clear = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    half = Image.new("RGBA", (40, 40), (0, 0, 0, 128))  # half transparent black
    assert torch.allclose(image_tokenizer.preprocess(clear), torch.ones(3, 32, 32))
    assert torch.allclose(image_tokenizer.preprocess(half), torch.full((3, 32, 32), 127 / 127.5 - 1), atol=0.01)


def test_preprocess_resizes_shortest_side_and_center_crops(image_tokenizer):
    # 64x32: left quarter red, middle half green, right quarter blue. Shortest side 32 -> no resize,
    # the centre crop keeps exactly the green half.
    wide = Image.new("RGB", (64, 32), (0, 255, 0))
    wide.paste((255, 0, 0), (0, 0, 16, 32))
    wide.paste((0, 0, 255), (48, 0, 64, 32))
    x = image_tokenizer.preprocess(wide)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[1], torch.ones(32, 32)) and torch.allclose(x[0], -torch.ones(32, 32))
    # 20x100 tall: scaled up to 32x160, cropped to the middle 32x32 (rows 64..96 of the scaled image).
    tall = Image.new("RGB", (20, 100), (255, 255, 255))
    tall.paste((0, 0, 0), (0, 40, 20, 60))  # black band in the middle fifth
    y = image_tokenizer.preprocess(tall)
    assert y.shape == (3, 32, 32)
    assert y[:, 4:28].max() < -0.9  # the crop sits inside the black band
    assert y.min() >= -1 and y.max() <= 1


def test_postprocess_round_trips_flat_colour(image_tokenizer):
    colour = (12, 200, 99)
    out = image_tokenizer.postprocess(image_tokenizer.preprocess(Image.new("RGB", (50, 70), colour)))
    assert out.size == (32, 32) and out.mode == "RGB"
    assert all(abs(a - b) <= 1 for a, b in zip(out.getpixel((5, 5)), colour))
    png = image_tokenizer.to_png(out)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size == (32, 32)


def test_image_to_tokens_maps_codes_through_the_vocab(image_tokenizer, scattered):
    img = Image.effect_noise((32, 32), 80).convert("RGB")
    codes = image_tokenizer.encode(img)
    tokens = image_tokenizer.image_to_tokens(img)
    assert codes.shape == (1, image_tokenizer.num_tokens) == (1, 256)
    assert tokens == [int(scattered.image_vocab.code_to_token[c]) for c in codes[0]]
    assert all(scattered.id_to_token(t) == image_token_name(int(c)) for t, c in zip(tokens, codes[0]))
    assert torch.equal(image_tokenizer.encode([img, img]), torch.cat([codes, codes]))


def test_tokens_to_image_and_batched_decode(image_tokenizer):
    img = Image.effect_noise((32, 32), 80).convert("RGB")
    tokens = image_tokenizer.image_to_tokens(img)
    out = image_tokenizer.tokens_to_image(tokens)
    assert isinstance(out, Image.Image) and out.size == (32, 32)
    codes = image_tokenizer.encode([img, img.rotate(90)])
    batch = image_tokenizer.decode_codes(codes)
    assert isinstance(batch, list) and len(batch) == 2
    # batched convolutions may pick another kernel: equal up to one step of uint8 rounding
    diff = np.abs(np.asarray(batch[0]).astype(int) - np.asarray(out).astype(int))
    assert diff.max() <= 1
    with pytest.raises(ValueError, match="256 image tokens, got 3"):
        image_tokenizer.tokens_to_image(tokens[:3])


def test_preview_repeats_the_last_row(image_tokenizer):
    g = image_tokenizer.grid_size
    codes = torch.randint(0, NUM_CODES, (g * g,), generator=torch.Generator().manual_seed(3))
    tokens = image_tokenizer.vocab.codes_to_tokens(codes).tolist()
    k = 2 * g + 5  # two full rows and five cells of the third
    filled = codes.clone().view(g, g)
    filled[2, 5:] = filled[1, 5:]
    filled[3:] = filled[2]
    expected = image_tokenizer.decode_codes(filled.flatten())
    assert np.asarray(image_tokenizer.preview(tokens[:k])).tolist() == np.asarray(expected).tolist()
    assert image_tokenizer.preview([]).size == (32, 32)
    assert np.asarray(image_tokenizer.preview(tokens)).tolist() == np.asarray(image_tokenizer.decode_codes(codes)).tolist()


def test_encoder_only_tokenizer_cannot_decode(scattered):
    it = ImageTokenizer(VQModel(VQ, with_decoder=False), scattered.image_vocab)
    assert not it.can_decode
    assert len(it.image_to_tokens(Image.new("RGB", (32, 32)))) == 256
    with pytest.raises(RuntimeError, match="no decoder"):
        it.decode_codes(torch.zeros(256, dtype=torch.long))


def test_load_tokenizers(tmp_path):
    path = save(build_tokenizer(CORPUS, vocab_size=600, num_image_codes=NUM_CODES), tmp_path / "tokenizer.json")
    text, image = load_tokenizers(path, VQModel(VQ, with_decoder=False))
    assert image is not None and image.num_tokens == 256 and text.image_vocab is image.vocab
    assert load_tokenizers(path, None)[1] is None
    bigger = VQConfig(**{**VQ.__dict__, "num_embeddings": 128})
    with pytest.raises(CheckpointError, match="64 image tokens, but the VQ codebook has 128"):
        load_tokenizers(path, VQModel(bigger, with_decoder=False))


def test_extreme_aspect_ratios_are_cropped_without_scaling_up_the_long_side(image_tokenizer):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    thin = Image.new("RGB", (1, 20000), (200, 10, 10))  # naive resize-then-crop: 32 x 640000 pixels
    pixels = image_tokenizer.preprocess(thin)
    assert pixels.shape == (3, 32, 32)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 20_000  # KiB
    assert torch.allclose(pixels[:, 16, 16], torch.tensor([200, 10, 10]) / 127.5 - 1, atol=0.02)
