"""The transformer's cache interface: several new tokens per row, ragged rows, and roll-back.

These are the properties the engine relies on (continuous batching, no re-prefill) and that
speculative Jacobi decoding of images will rely on (append a window, keep the accepted prefix).
"""
import torch

from chameleon_serve.model.config import ChameleonConfig
from chameleon_serve.model.kv_cache import CacheBatch, KVCache
from chameleon_serve.model.transformer import Transformer

CFG = ChameleonConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, vq=None)


def model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(CFG).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return m


def full_logits(m, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return m.logits(m(torch.tensor([tokens])))[0]


def test_chunked_cached_forward_equals_one_full_forward():
    m, tokens = model(), torch.randint(0, 97, (20,)).tolist()
    cache, out = KVCache.for_model(CFG, 2, 64), []
    with torch.no_grad():
        for start, end in [(0, 7), (7, 8), (8, 15), (15, 20)]:
            step = CacheBatch.make([1], [start], end - start)
            out.append(m.logits(m(torch.tensor([tokens[start:end]]), cache, step))[0])
    torch.testing.assert_close(torch.cat(out), full_logits(m, tokens), rtol=1e-4, atol=1e-4)


def test_rows_of_different_lengths_decode_together():
    m = model()
    a, b = torch.randint(0, 97, (12,)).tolist(), torch.randint(0, 97, (5,)).tolist()
    cache = KVCache.for_model(CFG, 4, 64)
    with torch.no_grad():
        m(torch.tensor([a[:-1]]), cache, CacheBatch.make([3], [0], len(a) - 1))
        m(torch.tensor([b[:-1]]), cache, CacheBatch.make([0], [0], len(b) - 1))
        step = CacheBatch.make([3, 0], [len(a) - 1, len(b) - 1], 1)
        last = m.logits(m(torch.tensor([[a[-1]], [b[-1]]]), cache, step))[:, -1]
    torch.testing.assert_close(last[0], full_logits(m, a)[-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last[1], full_logits(m, b)[-1], rtol=1e-4, atol=1e-4)


def test_a_rejected_window_is_rolled_back_by_forgetting_its_tail():
    """Speculative decoding: append a 4-token draft, accept 2, continue from there as if never drafted."""
    m, prefix = model(), torch.randint(0, 97, (10,)).tolist()
    draft, correction = [5, 6, 7, 8], [40, 41, 42]
    cache = KVCache.for_model(CFG, 1, 64)
    with torch.no_grad():
        m(torch.tensor([prefix]), cache, CacheBatch.make([0], [0], len(prefix)))
        m(torch.tensor([draft]), cache, CacheBatch.make([0], [len(prefix)], len(draft)))
        accepted = len(prefix) + 2  # the sequence's length is the only truth: positions past it are stale
        out = m.logits(m(torch.tensor([correction]), cache, CacheBatch.make([0], [accepted], len(correction))))[0]
    expected = full_logits(m, prefix + draft[:2] + correction)[-len(correction):]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_fused_projections_change_nothing_but_speed():
    m, tokens = model(), torch.randint(0, 97, (9,)).tolist()
    before = full_logits(m, tokens)
    keys = sorted(m.state_dict())
    m.fuse_projections()
    torch.testing.assert_close(full_logits(m, tokens), before, rtol=1e-5, atol=1e-5)
    assert sorted(m.state_dict()) == keys  # still saves and loads under the HF names


def test_weights_stored_transposed_give_the_same_logits_and_state_dict():
    m, tokens = model(), torch.randint(0, 97, (9,)).tolist()
    before = full_logits(m, tokens)
    m.fuse_projections()
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    for role in m.WEIGHT_ROLES:
        m.store_transposed(role, True)
        assert all(w.stride() == (1, w.shape[0]) for w in m.role_weights(role))  # [in, out] in memory
    torch.testing.assert_close(full_logits(m, tokens), before, rtol=1e-5, atol=1e-5)
    state = m.state_dict()
    assert sorted(state) == sorted(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    # the fused q/k/v and QK-norm tensors and their per-projection parameters stay one storage
    attn = m.layers[0].self_attn
    assert attn.q_proj.weight.data_ptr() == attn.qkv_weight.data_ptr()
    assert attn.k_norm.weight.data_ptr() == attn.qk_norm_fused[0].data_ptr() + attn.q_norm.weight.numel() * 4
    for role in m.WEIGHT_ROLES:
        m.store_transposed(role, False)
        assert all(w.is_contiguous() for w in m.role_weights(role))
    torch.testing.assert_close(full_logits(m, tokens), before, rtol=1e-5, atol=1e-5)


def test_loading_a_state_dict_after_fusing_updates_the_fused_tensors():
    m, tokens = model(), torch.randint(0, 97, (9,)).tolist()
    other = model(seed=1)
    expected = full_logits(other, tokens)
    m.fuse_projections()
    m.store_transposed("qkv", True)
    m.load_state_dict(other.state_dict())
    torch.testing.assert_close(full_logits(m, tokens), expected, rtol=1e-5, atol=1e-5)
