"""The decoding engine, specified on random tiny checkpoints written in the real HF format.

Random weights make random text, so these tests check what the engine promises whatever the model
says: the token grammar, budgets and caps, determinism, batching invariance, cancellation, cache use.
"""
from __future__ import annotations

import threading
import time

import pytest
import torch

from chameleon_serve.engine import (
    CFGMode, Engine, EngineConfig, Error, Finished, GenerationRequest, ImageDone, ImageParams, ImageProgress,
    ImageStarted, InvalidRequest, OutputMode, QueueFull, SamplingParams, TextDelta,
)
from chameleon_serve.engine.sampling import guided_logits
from chameleon_serve.model.config import VQConfig
from chameleon_serve.testing import write_random_checkpoint

# 32 px images on a 4x4 grid: 16 image tokens, so image blocks are 18 tokens long and tests stay fast.
TINY_VQ = VQConfig(resolution=32, base_channels=32, channel_multiplier=(1, 1, 1, 2), num_res_blocks=1,
                   latent_channels=32, num_embeddings=64, embed_dim=8)
GREEDY = SamplingParams(temperature=0.0)
HOT = SamplingParams(temperature=1.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # init_std 0.3: peaky enough that every mode (text, begin-image, stop) actually occurs across seeds
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt"), format="hf", vq=TINY_VQ, init_std=0.3,
                                   max_position_embeddings=512, seed=0)


@pytest.fixture(scope="module")
def engine(checkpoint):
    eng = Engine.from_checkpoint(checkpoint, config=EngineConfig(max_sequences=12, max_queue=64)).start()
    yield eng
    eng.shutdown()


def biased_engine(checkpoint, favoured: list[int], strength: float = 1.0, **config) -> Engine:
    """An engine whose model puts extra probability on `favoured` tokens at every step (almost all at 1.0).

    Blocks add nothing (o_proj and down_proj zeroed), every embedding carries a large constant in
    dimension 0, and only the favoured rows of lm_head read that dimension.
    """
    eng = Engine.from_checkpoint(checkpoint, config=EngineConfig(**config))
    model = eng.runner.model
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.embed_tokens.weight[:, 0] = 50.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[favoured, 0] = strength
    return eng.start()


def run(engine: Engine, prompt="draw something", **kw) -> list:
    kw.setdefault("max_tokens", 64)
    request = GenerationRequest(prompt_tokens=engine.encode_text(prompt), **kw)
    return engine.submit(request).result()


def finished(events) -> Finished:
    assert isinstance(events[-1], Finished), events[-1]
    return events[-1]


def check_grammar(engine: Engine, tokens: list[int]) -> int:
    """Asserts the token grammar of an answer; returns its number of images.

    Text mode: no image token, no end-of-image. Image block: begin-image, exactly N image tokens,
    end-of-image. A stop token may only be last.
    """
    sp, is_image = engine.special, engine.text_tokenizer.image_vocab.is_image_token
    n, i, images = engine.info.image_tokens, 0, 0
    while i < len(tokens):
        t = tokens[i]
        if t == sp.boi:
            block = tokens[i + 1 : i + 1 + n]
            assert len(block) == n and all(is_image[b] for b in block), "image block must hold exactly N image tokens"
            assert tokens[i + 1 + n] == sp.eoi, "an image block must end with end-of-image"
            i, images = i + n + 2, images + 1
            continue
        assert not is_image[t] and t != sp.eoi, f"token {t} is not allowed in text mode"
        if t in engine.stop_tokens:
            assert i == len(tokens) - 1, "nothing may follow a stop token"
        i += 1
    return images


# ---- the grammar -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("output", list(OutputMode))
def test_every_output_obeys_the_grammar(engine, output):
    for seed in range(12):
        events = run(engine, output=output, seed=seed, max_tokens=80, text=HOT,
                     image=ImageParams(sampling=HOT, max_images=3))
        done = finished(events)
        images = check_grammar(engine, done.token_ids)
        assert images == done.images == sum(isinstance(e, ImageDone) for e in events)
        if output is OutputMode.TEXT:
            assert images == 0
        if output is OutputMode.IMAGE:
            assert images == 1 and done.finish_reason == "stop"
            assert done.token_ids[0] == engine.special.boi and done.token_ids[-1] == engine.special.eoi


def test_interleaved_answers_mix_text_and_images_and_obey_the_grammar(checkpoint):
    tok = Engine.from_checkpoint(checkpoint).text_tokenizer
    eng = biased_engine(checkpoint, [tok.special.boi], strength=0.45)  # begin-image now and then
    try:
        mixed = 0
        for seed in range(10):
            done = finished(run(eng, seed=seed, text=HOT, image=ImageParams(sampling=HOT, max_images=3),
                                max_tokens=120, ignore_eos=True))
            images = check_grammar(eng, done.token_ids)
            text_tokens = done.usage.text_tokens
            assert done.usage.image_tokens == images * eng.layout.block_len
            assert text_tokens + done.usage.image_tokens == len(done.token_ids)
            mixed += images > 0 and text_tokens > 0
        assert mixed >= 5  # the test is not vacuous: most answers hold both
    finally:
        eng.shutdown()


def test_text_only_never_yields_an_image_even_when_the_model_wants_one(checkpoint):
    tok = Engine.from_checkpoint(checkpoint).text_tokenizer
    favoured = [tok.special.boi] + tok.image_vocab.code_to_token.tolist()
    eng = biased_engine(checkpoint, favoured)
    try:
        for seed in range(5):
            done = finished(run(eng, output=OutputMode.TEXT, seed=seed, text=HOT, max_tokens=40, ignore_eos=True))
            assert check_grammar(eng, done.token_ids) == 0
            assert done.finish_reason == "length"
    finally:
        eng.shutdown()


def test_image_only_yields_exactly_one_image_even_when_the_model_wants_to_stop(checkpoint):
    tok = Engine.from_checkpoint(checkpoint).text_tokenizer
    eng = biased_engine(checkpoint, [tok.special.eos, tok.special.eot])
    try:
        events = run(eng, output=OutputMode.IMAGE, seed=0, image=ImageParams(sampling=HOT), max_tokens=200)
        kinds = [type(e) for e in events]
        assert kinds.count(ImageStarted) == 1 and kinds.count(ImageDone) == 1 and TextDelta not in kinds
        done = finished(events)
        assert done.finish_reason == "stop" and len(done.token_ids) == eng.layout.block_len
    finally:
        eng.shutdown()


def test_image_cap_and_token_budget_hold(checkpoint):
    tok = Engine.from_checkpoint(checkpoint).text_tokenizer
    eng = biased_engine(checkpoint, [tok.special.boi] + tok.image_vocab.code_to_token.tolist())
    block = eng.layout.block_len
    try:
        # the model would draw images forever: the cap stops it at two
        done = finished(run(eng, seed=0, max_tokens=4 * block, ignore_eos=True, image=ImageParams(max_images=2)))
        assert check_grammar(eng, done.token_ids) == 2
        # begin-image is forbidden once an image no longer fits in max_tokens: never a truncated image
        for budget in (block - 1, block, block + 3, 2 * block - 1):
            done = finished(run(eng, seed=1, max_tokens=budget, ignore_eos=True, image=ImageParams(max_images=9)))
            assert len(done.token_ids) == budget and done.finish_reason == "length"
            assert check_grammar(eng, done.token_ids) == budget // block
    finally:
        eng.shutdown()


def test_begin_image_is_forbidden_when_the_image_would_not_fit_the_context(checkpoint):
    tok = Engine.from_checkpoint(checkpoint).text_tokenizer
    eng = biased_engine(checkpoint, [tok.special.boi] + tok.image_vocab.code_to_token.tolist(), max_model_len=40)
    try:
        done = finished(run(eng, seed=0, max_tokens=500, ignore_eos=True))
        assert done.finish_reason == "length"
        assert done.usage.prompt_tokens + done.usage.completion_tokens == 40
        # images are drawn while a whole block still fits in the 40 positions, never a truncated one
        assert check_grammar(eng, done.token_ids) == (40 - done.usage.prompt_tokens) // eng.layout.block_len
    finally:
        eng.shutdown()


# ---- stopping ------------------------------------------------------------------------------------------------

def test_stop_tokens_end_the_answer_unless_ignored(checkpoint):
    tok = Engine.from_checkpoint(checkpoint).text_tokenizer
    eng = biased_engine(checkpoint, [tok.special.eot])
    try:
        done = finished(run(eng, output=OutputMode.TEXT, seed=0))
        assert done.finish_reason == "stop" and done.token_ids == [tok.special.eot]
        assert done.stop_reason == "<reserved08706>"
        done = finished(run(eng, output=OutputMode.TEXT, seed=0, min_tokens=5, max_tokens=20))
        assert len(done.token_ids) == 6 and done.finish_reason == "stop"
        done = finished(run(eng, output=OutputMode.TEXT, seed=0, ignore_eos=True, max_tokens=20))
        assert len(done.token_ids) == 20 and done.finish_reason == "length"
        assert not set(done.token_ids) & set(eng.stop_tokens)
    finally:
        eng.shutdown()


def test_stop_strings_cut_the_text_and_are_not_emitted(engine):
    base = run(engine, output=OutputMode.TEXT, seed=3, text=GREEDY, max_tokens=40, ignore_eos=True)
    text = "".join(e.text for e in base if isinstance(e, TextDelta))
    assert len(text) > 12
    stop = text[8:11]
    events = run(engine, output=OutputMode.TEXT, seed=3, text=GREEDY, max_tokens=40, ignore_eos=True, stop=[stop])
    cut = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert cut == text[: text.index(stop)]
    assert finished(events).finish_reason == "stop" and finished(events).stop_reason == stop


def test_text_deltas_add_up_to_the_decoded_answer(engine):
    for seed in range(6):
        events = run(engine, output=OutputMode.TEXT, seed=seed, text=HOT, max_tokens=50)
        ids = [t for t in finished(events).token_ids if t not in engine.stop_tokens]
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == engine.text_tokenizer.decode(ids)


# ---- determinism and batching ----------------------------------------------------------------------------------

def test_any_64_bit_seed_works(engine):
    for seed in (-(2**63), -1, 0, 2**64 - 1):
        assert finished(run(engine, seed=seed, max_tokens=5, text=HOT)).finish_reason in ("stop", "length")


def test_text_that_is_not_unicode_is_a_clear_error(engine):
    from chameleon_serve.tokenizers import ChatMessage

    with pytest.raises(InvalidRequest, match="Unicode"):
        engine.build_chat_prompt([ChatMessage("user", ["bad \ud800 text"])])


def test_same_seed_same_output(engine):
    kw = dict(seed=1234, text=HOT, image=ImageParams(sampling=HOT), max_tokens=90)
    first = run(engine, **kw)
    second = run(engine, **kw)
    assert finished(first).token_ids == finished(second).token_ids
    assert [e.png for e in first if isinstance(e, ImageDone)] == [e.png for e in second if isinstance(e, ImageDone)]
    other = run(engine, **{**kw, "seed": 99})
    assert finished(other).token_ids != finished(first).token_ids


def test_32_concurrent_mixed_requests_match_their_solo_runs(checkpoint):
    engine = Engine.from_checkpoint(checkpoint, config=EngineConfig(max_sequences=64, max_queue=64)).start()
    try:
        _check_concurrent_equals_solo(engine)
    finally:
        engine.shutdown()


def _check_concurrent_equals_solo(engine):
    outputs = [OutputMode.TEXT, OutputMode.IMAGE, OutputMode.INTERLEAVED]
    cfgs = [CFGMode.NONE, CFGMode.NONE, CFGMode.PLAIN, CFGMode.TEXT_IMAGE]
    requests = [
        GenerationRequest(
            prompt_tokens=engine.encode_text("prompt number %d " % i * (1 + i % 5)),
            output=outputs[i % 3], max_tokens=30 + 7 * (i % 4), seed=i, text=GREEDY,
            image=ImageParams(sampling=GREEDY, cfg=cfgs[i % 4]),
        )
        for i in range(32)
    ]
    solo = [finished(engine.submit(r).result()).token_ids for r in requests]
    handles = [engine.submit(r) for r in requests]
    together = [finished(h.result()).token_ids for h in handles]
    assert together == solo
    assert engine.stats().steps  # (all 32 fit in the cache at once: 64 rows for 32 requests and their CFG rows)


def test_no_reprefill_tokens_through_the_model_equal_prompt_plus_generated(engine, checkpoint):
    for output in OutputMode:
        before = engine.stats().tokens_forwarded
        done = finished(run(engine, output=output, seed=5, max_tokens=60, image=ImageParams(max_images=2)))
        forwarded = engine.stats().tokens_forwarded - before
        # every prompt and generated token is fed once, except the last generated token, never fed at all
        assert forwarded == done.usage.prompt_tokens + done.usage.completion_tokens - 1
    # and across modality switches: text -> image -> text -> image -> text, still each token once
    tok = engine.text_tokenizer
    eng = biased_engine(checkpoint, [tok.special.boi], strength=0.45)
    try:
        switches = 0
        for seed in range(6):
            done = finished(run(eng, seed=seed, max_tokens=120, ignore_eos=True, text=HOT,
                                image=ImageParams(max_images=3)))
            assert eng.stats().tokens_forwarded == done.usage.prompt_tokens + done.usage.completion_tokens - 1
            eng.runner.tokens_forwarded = 0
            ids = done.token_ids
            if tok.special.eoi in ids and ids.index(tok.special.eoi) < len(ids) - 1:
                switches += 1  # text came after an image in this answer
        assert switches >= 3
    finally:
        eng.shutdown()


def test_cfg_rows_cost_only_their_own_short_contexts(engine):
    before = engine.stats().tokens_forwarded
    done = finished(run(engine, output=OutputMode.IMAGE, seed=5, image=ImageParams(cfg=CFGMode.PLAIN)))
    forwarded = engine.stats().tokens_forwarded - before
    n = engine.info.image_tokens
    main = done.usage.prompt_tokens + done.usage.completion_tokens - 1
    # unconditional row: <s>, begin-image, then the same N-1 image tokens as the main row
    assert forwarded == main + 2 + (n - 1)


# ---- classifier-free guidance ---------------------------------------------------------------------------------

def test_guided_logits_follow_the_published_formulas():
    c, i, u = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([1.0])
    three = ImageParams(cfg=CFGMode.TEXT_IMAGE, guidance_scale_text=3.0, guidance_scale_image=1.2)
    assert torch.allclose(guided_logits([c, i, u], three), u + 1.2 * (i - u) + 3.0 * (c - i))
    plain = ImageParams(cfg=CFGMode.PLAIN, guidance_scale=4.0)
    assert torch.allclose(guided_logits([c, u], plain), u + 4.0 * (c - u))


@pytest.mark.parametrize("cfg", [CFGMode.PLAIN, CFGMode.TEXT_IMAGE])
def test_cfg_changes_the_image_and_frees_its_rows(engine, cfg):
    plain = run(engine, output=OutputMode.IMAGE, seed=8, image=ImageParams(sampling=GREEDY))
    guided = run(engine, output=OutputMode.IMAGE, seed=8, image=ImageParams(sampling=GREEDY, cfg=cfg, guidance_scale=4.0))
    assert check_grammar(engine, finished(guided).token_ids) == 1
    assert finished(guided).token_ids != finished(plain).token_ids
    assert engine.scheduler.slots.num_free == engine.scheduler.slots.num_slots


def test_text_image_cfg_keeps_prompt_images_in_its_image_only_row(engine):
    sp = engine.special
    image = [sp.boi] + engine.text_tokenizer.image_vocab.code_to_token[: engine.info.image_tokens].tolist() + [sp.eoi]
    prompt = engine.encode_text("like this") + image + engine.text_tokenizer.encode("again")
    before = engine.stats().tokens_forwarded
    req = GenerationRequest(prompt_tokens=prompt, output=OutputMode.IMAGE, max_tokens=100, seed=0,
                            image=ImageParams(cfg=CFGMode.TEXT_IMAGE))
    done = finished(engine.submit(req).result())
    n = engine.info.image_tokens
    main = done.usage.prompt_tokens + done.usage.completion_tokens - 1
    image_only = 1 + len(image) + 1 + (n - 1)  # <s> + the prompt's image block + begin-image + N-1 tokens
    uncond = 2 + (n - 1)
    assert engine.stats().tokens_forwarded - before == main + image_only + uncond


# ---- events ---------------------------------------------------------------------------------------------------

def test_image_events_come_in_order_with_previews_when_asked(engine):
    events = run(engine, output=OutputMode.IMAGE, seed=2, image=ImageParams(preview_every=4))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "ImageStarted" and kinds[-2:] == ["ImageDone", "Finished"]
    previews = [e for e in events if isinstance(e, ImageProgress) and e.preview_png]
    n = engine.info.image_tokens
    assert [p.tokens_done for p in previews] == list(range(4, n, 4))
    done = next(e for e in events if isinstance(e, ImageDone))
    assert done.png.startswith(b"\x89PNG") and (done.width, done.height) == (32, 32)


def test_logprobs_are_computed_over_the_allowed_text_tokens(engine):
    events = run(engine, output=OutputMode.TEXT, seed=0, text=GREEDY, max_tokens=10, ignore_eos=True,
                 logprobs=True, top_logprobs=3)
    deltas = [e for e in events if isinstance(e, TextDelta) and e.logprobs]
    assert len(deltas) == 10
    for d in deltas:
        lp = d.logprobs[0]
        assert lp.token_id == d.token_ids[0] and lp.logprob <= 0
        assert len(lp.top) == 3 and lp.top[0].logprob >= lp.top[-1].logprob
        assert lp.top[0].token_id == lp.token_id  # greedy picks the best allowed token
        assert not engine.text_tokenizer.image_vocab.is_image_token[[t.token_id for t in lp.top]].any()


def test_sync_and_async_iteration_see_the_same_events(engine):
    import asyncio

    req = dict(output=OutputMode.INTERLEAVED, seed=11, max_tokens=60, text=HOT)

    async def collect():
        handle = engine.submit(GenerationRequest(prompt_tokens=engine.encode_text("hi"), **req))
        return [e async for e in handle.stream()]

    async_events = asyncio.run(collect())
    sync_events = run(engine, prompt="hi", **req)
    assert [type(e) for e in async_events] == [type(e) for e in sync_events]
    assert finished(async_events).token_ids == finished(sync_events).token_ids


# ---- cancellation, limits, errors --------------------------------------------------------------------------

def test_cancel_stops_within_a_step_and_frees_the_slot(engine):
    handle = engine.submit(GenerationRequest(prompt_tokens=engine.encode_text("go"), max_tokens=400,
                                             output=OutputMode.TEXT, ignore_eos=True))
    first = next(iter(handle))
    assert isinstance(first, TextDelta)
    steps_at_cancel = engine.stats().steps
    handle.cancel()
    rest = list(handle)
    assert finished(rest).finish_reason == "cancelled"
    # the loop reads its inbox before every step: at most the step already in flight completes
    assert engine.stats().steps - steps_at_cancel <= 1
    deadline = time.monotonic() + 5
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().running == 0
    assert engine.scheduler.slots.num_free == engine.scheduler.slots.num_slots


def test_a_full_queue_refuses_and_waiting_requests_run_later(checkpoint):
    eng = Engine.from_checkpoint(checkpoint, config=EngineConfig(max_sequences=1, max_queue=2)).start()
    try:
        long = dict(prompt_tokens=eng.encode_text("x"), max_tokens=300, output=OutputMode.TEXT, ignore_eos=True)
        handles = [eng.submit(GenerationRequest(**long)) for _ in range(2)]  # one may still be in the inbox
        time.sleep(0.2)
        handles.append(eng.submit(GenerationRequest(**long)))
        with pytest.raises(QueueFull):
            for _ in range(3):
                handles.append(eng.submit(GenerationRequest(**long)))
        assert all(finished(h.result()).finish_reason == "length" for h in handles)
    finally:
        eng.shutdown()


@pytest.mark.parametrize("bad, param", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(prompt_tokens=[]), "messages"),
    (dict(prompt_tokens=[10**6]), "prompt"),
    (dict(prompt_tokens=[1] * 600), "messages"),
    (dict(output=OutputMode.IMAGE, max_tokens=5), "max_tokens"),
    (dict(text=SamplingParams(top_p=0.0)), "top_p"),
    (dict(top_logprobs=50), "top_logprobs"),
    (dict(seed=2**64), "seed"),
    (dict(output=OutputMode.IMAGE, max_tokens=100, image=ImageParams(max_images=0)), "image.max_images"),
    (dict(text=SamplingParams(top_k=2**40)), "top_k"),
    (dict(text=SamplingParams(repetition_penalty=1e-30)), "repetition_penalty"),
])
def test_bad_requests_are_refused_with_the_field_named(engine, bad, param):
    kw = dict(prompt_tokens=engine.encode_text("x"), max_tokens=10) | bad
    with pytest.raises(InvalidRequest) as err:
        engine.submit(GenerationRequest(**kw))
    assert err.value.param == param


def test_image_output_on_a_checkpoint_without_decoder_is_refused(tmp_path):
    path = write_random_checkpoint(tmp_path, format="hf", vq=TINY_VQ, with_vq_decoder=False)
    eng = Engine.from_checkpoint(path)
    assert eng.info.can_read_images and not eng.info.can_generate_images
    with pytest.raises(InvalidRequest, match="decoder"):
        eng.submit(GenerationRequest(prompt_tokens=eng.encode_text("x"), max_tokens=50, output=OutputMode.IMAGE))


def test_a_failing_request_gets_an_error_and_the_loop_goes_on(engine, monkeypatch):
    original = engine.image_tokenizer.to_png
    calls = threading.Event()

    def broken_once(image):
        if not calls.is_set():
            calls.set()
            raise RuntimeError("disk on fire")
        return original(image)

    monkeypatch.setattr(engine.image_tokenizer, "to_png", broken_once)
    events = run(engine, output=OutputMode.IMAGE, seed=0)
    assert isinstance(events[-1], Error) and "disk on fire" in events[-1].message
    monkeypatch.setattr(engine.image_tokenizer, "to_png", original)
    assert finished(run(engine, output=OutputMode.IMAGE, seed=0)).images == 1
    deadline = time.monotonic() + 5
    while engine.scheduler.slots.num_free != engine.scheduler.slots.num_slots and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.scheduler.slots.num_free == engine.scheduler.slots.num_slots


def test_long_prompts_are_prefilled_in_chunks_while_others_stream(checkpoint):
    eng = Engine.from_checkpoint(checkpoint, config=EngineConfig(max_sequences=4, prefill_chunk=32)).start()
    try:
        streaming = eng.submit(GenerationRequest(prompt_tokens=eng.encode_text("a"), max_tokens=60,
                                                 output=OutputMode.TEXT, ignore_eos=True))
        next(iter(streaming))
        steps_before = eng.stats().steps
        long_prompt = (eng.text_tokenizer.text_token_ids[:50].tolist() * 8)[:400]
        done = finished(eng.submit(GenerationRequest(prompt_tokens=long_prompt, max_tokens=2,
                                                     output=OutputMode.TEXT)).result())
        assert done.usage.prompt_tokens == 400
        # the 400-token prompt took >= 12 chunks; the running stream kept decoding between them
        assert eng.stats().steps - steps_before >= 12
        assert finished(streaming.result()).finish_reason == "length"
    finally:
        eng.shutdown()


def test_padded_decode_batches_give_the_same_tokens(checkpoint):
    """On CUDA decode batches are padded to fixed sizes; padding rows must not change any result."""
    requests = [dict(prompt_tokens=[1, 2, 3 + i], max_tokens=20 + i, output=OutputMode.TEXT, ignore_eos=True,
                     seed=i, text=GREEDY) for i in range(5)]
    results = []
    for pad in (False, True):
        eng = Engine.from_checkpoint(checkpoint, config=EngineConfig(max_sequences=8, pad_batches=pad)).start()
        try:
            handles = [eng.submit(GenerationRequest(**r)) for r in requests]
            results.append([finished(h.result()).token_ids for h in handles])
        finally:
            eng.shutdown()
    assert results[0] == results[1]


def test_weight_memory_order_tuning_changes_no_token(checkpoint):
    """On CPU the engine stores each weight role in whichever memory order its one-token matmuls run
    faster (measured at start); values never change, so neither do the tokens, images included."""
    requests = [dict(prompt_tokens=[1, 2, 3 + i], max_tokens=40, output=OutputMode.INTERLEAVED, ignore_eos=True,
                     seed=i) for i in range(4)]
    results, layouts = [], []
    for tune in (False, True):
        eng = Engine.from_checkpoint(checkpoint, config=EngineConfig(max_sequences=8, tune_weight_layouts=tune)).start()
        try:
            handles = [eng.submit(GenerationRequest(**r)) for r in requests]
            results.append([finished(h.result()).token_ids for h in handles])
            layouts.append(dict(eng.runner.weight_layouts))
        finally:
            eng.shutdown()
    assert results[0] == results[1]
    assert layouts[0] == {} and set(layouts[1]) == {"qkv", "o_proj", "gate_up", "down_proj", "lm_head"}
    assert set(layouts[1].values()) <= {"[out, in]", "[in, out]"}


def test_extreme_but_valid_settings_never_break_the_batch(engine):
    """A near-zero temperature must not turn logits into NaN for the rows sharing its step."""
    kw = dict(prompt_tokens=engine.encode_text("x"), max_tokens=20, output=OutputMode.TEXT, ignore_eos=True)
    handles = [
        engine.submit(GenerationRequest(**kw, seed=1, text=SamplingParams(temperature=1e-4, top_p=0.5))),
        engine.submit(GenerationRequest(**kw, seed=2, text=SamplingParams(temperature=1.0, repetition_penalty=0.01))),
        engine.submit(GenerationRequest(**kw, seed=3, text=SamplingParams(temperature=100.0, top_k=2**20))),
    ]
    assert all(finished(h.result()).finish_reason == "length" for h in handles)


def test_shutdown_finishes_every_request_with_an_answer(checkpoint):
    eng = Engine.from_checkpoint(checkpoint, config=EngineConfig(max_sequences=2)).start()
    long = dict(prompt_tokens=eng.encode_text("x"), max_tokens=400, output=OutputMode.TEXT, ignore_eos=True)
    handles = [eng.submit(GenerationRequest(**long)) for _ in range(5)]  # two run, three wait
    next(iter(handles[0]))
    eng.shutdown(timeout=0.0)
    reasons = [finished(h.result()).finish_reason for h in handles]
    assert reasons.count("cancelled") >= 3
    with pytest.raises(Exception, match="not accepting"):
        eng.submit(GenerationRequest(**long))
