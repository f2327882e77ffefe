"""POST /v1/completions: raw text continuation (text output only), streamed or not."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from chameleon_serve.engine import Engine, GenerationRequest, OutputMode, TextDelta, TokenLogprob
from chameleon_serve.server import sse
from chameleon_serve.server.context import ServerContext, get_context
from chameleon_serve.server.errors import ERROR_RESPONSES, bad_request
from chameleon_serve.server.generation import Generation, submit
from chameleon_serve.server.schemas import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
from chameleon_serve.server.translate import check_model, check_token_cap, api_finish_reason, stop_list, text_sampling, token_budget, usage

router = APIRouter(tags=["completions"])

STREAM_DOC = {
    "description": "A `text_completion`, or with `stream: true` a text/event-stream of the same objects "
    "(one text piece each) ending with `data: [DONE]`.",
    "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/CompletionResponse"}}},
}


@router.post("/v1/completions", response_model=CompletionResponse, responses={200: STREAM_DOC, **ERROR_RESPONSES}, summary="Continue a raw prompt")
async def create_completion(body: CompletionRequest, request: Request, ctx: Annotated[ServerContext, Depends(get_context)]):
    engine = ctx.runtime.require_engine()
    settings, limits = ctx.settings, ctx.settings.limits
    check_model(body.model, settings.model_name)
    check_token_cap(body.max_tokens, limits)
    prompt = await _prompt_tokens(body.prompt, engine)
    gen_request = GenerationRequest(
        prompt_tokens=prompt,
        max_tokens=token_budget(body.max_tokens, len(prompt), OutputMode.TEXT, engine.info, limits),
        output=OutputMode.TEXT,
        text=text_sampling(body.temperature, body.top_p, body.top_k, body.repetition_penalty),
        stop=stop_list(body.stop),
        seed=body.seed,
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
    )
    generation = Generation(engine, submit(engine, gen_request), request, limits.request_timeout_s, ctx.metrics)
    reply = _Reply(f"cmpl-{gen_request.request_id}", settings.model_name, body.logprobs is not None)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse.stream(reply.chunks(generation, include_usage), ctx.metrics)
    return await reply.collect(generation)


async def _prompt_tokens(prompt: str | list[int], engine: Engine) -> list[int]:
    if isinstance(prompt, str):
        return await run_in_threadpool(engine.encode_text, prompt)
    vocab = engine.info.vocab_size
    bad = next((i for i, t in enumerate(prompt) if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(f"Token id {prompt[bad]} at position {bad} is outside the vocabulary [0, {vocab}).", f"prompt[{bad}]")
    return list(prompt)


class _Reply:
    def __init__(self, completion_id: str, model: str, want_logprobs: bool):
        self.id = completion_id
        self.model = model
        self.created = int(time.time())
        self.want_logprobs = want_logprobs

    async def collect(self, generation: Generation) -> CompletionResponse:
        text, logprobs = "", _LogprobsBuilder()
        async for event in generation.events():
            if isinstance(event, TextDelta):
                text += event.text
                logprobs.add(event.logprobs or [])
        finished = generation.finished
        choice = CompletionChoice(text=text, finish_reason=api_finish_reason(finished.finish_reason), logprobs=logprobs.build() if self.want_logprobs else None)
        return CompletionResponse(id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage(finished.usage))

    async def chunks(self, generation: Generation, include_usage: bool) -> AsyncIterator[str]:
        offset = 0
        async for event in generation.events():
            if not isinstance(event, TextDelta) or not (event.text or event.logprobs):
                continue
            logprobs = None
            if self.want_logprobs:
                builder = _LogprobsBuilder(offset)
                builder.add(event.logprobs or [])
                logprobs = builder.build()
            offset += len(event.text)
            yield self._chunk([CompletionChoice(text=event.text, finish_reason=None, logprobs=logprobs)])
        finished = generation.finished
        yield self._chunk([CompletionChoice(text="", finish_reason=api_finish_reason(finished.finish_reason))])
        if include_usage:
            yield sse.event(CompletionResponse(id=self.id, created=self.created, model=self.model, choices=[], usage=usage(finished.usage)).model_dump_json())

    def _chunk(self, choices: list[CompletionChoice]) -> str:
        return sse.event(CompletionResponse(id=self.id, created=self.created, model=self.model, choices=choices).model_dump_json())


class _LogprobsBuilder:
    """OpenAI's legacy logprobs layout: parallel lists, `text_offset` counted in characters."""

    def __init__(self, offset: int = 0):
        self.offset = offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float] = []
        self.top: list[dict[str, float]] = []
        self.offsets: list[int] = []

    def add(self, logprobs: list[TokenLogprob]) -> None:
        for lp in logprobs:
            self.tokens.append(lp.token)
            self.token_logprobs.append(lp.logprob)
            self.top.append({t.token: t.logprob for t in lp.top})
            self.offsets.append(self.offset)
            self.offset += len(lp.token)

    def build(self) -> CompletionLogprobs:
        return CompletionLogprobs(tokens=self.tokens, token_logprobs=self.token_logprobs, top_logprobs=self.top, text_offset=self.offsets)

