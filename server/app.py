"""HTTP only: OpenAI's routes, vLLM's tokenizer routes, errors as OpenAI's error object, server-sent events, the API
key, the body and queue limits. A request becomes a protocol.Completion before the engine sees it; the engine's
events come back through an asyncio queue and become JSON here. No model work happens on this side.

    POST /v1/completions       OpenAI's completions (protocol.FIELDS lists the fields), streamed with "stream"
    POST /v1/chat/completions  refused with a 400 that says why: GPT-2 is a base model with no chat template
    GET  /v1/models            the one model, under the name it was loaded by
    POST /tokenize, POST /detokenize, GET /tokenizer_info   vLLM's shapes (lm-eval's tokenizer_backend=remote)
    GET  /health               200 {"status": "ok"}: the model is loaded (the server listens only once it is)
    GET  /metrics              what the engine did, in Prometheus's text format
    GET  /                     the page (page.html)
With an API key, every route but / and /health asks for `Authorization: Bearer KEY`.
"""
import asyncio
import hmac
import json
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from server import protocol
from server.engine import Busy, Job
from server.protocol import APIError, bad

MAX_BODY = 4 << 20  # bytes in a request's body; more is a 413
PAGE = Path(__file__).with_name("page.html")
OPEN = ("/", "/health")  # the routes an API key does not guard
CHAT = ("GPT-2 is a base model: it continues text and has no chat template, so this server does not serve chat "
        "completions. Send the conversation as plain text to POST /v1/completions instead, e.g. "
        "{\"prompt\": \"Q: What is the capital of France?\\nA:\", \"stop\": [\"\\n\"]}")


def json_response(data, status=200, headers=None):
    return Response(json.dumps(data, allow_nan=False, ensure_ascii=False), status, headers, "application/json")


def error_response(e):
    return json_response(e.body(), e.status, e.headers)


def sse(data):
    return f"data: {json.dumps(data, allow_nan=False, ensure_ascii=False)}\n\n"


async def read_json(request):
    """The body as JSON, at most MAX_BODY bytes, or an APIError (413, 400) saying what is wrong with it."""
    too_big = APIError(413, f"the request body is over {MAX_BODY:,} bytes: send fewer or shorter prompts", code="body_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise too_big

    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(body, parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the body is not valid JSON ({e}); send an object such as {{\"prompt\": \"Hello\"}} with "
                  f"Content-Type: application/json") from None


async def disconnected(request):
    """Returns when the client has gone (the body was read already, so the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(engine, model_name, api_key=None, cors_origins=()):
    encoder, n_ctx, n_vocab = engine.encoder, engine.hparams["n_ctx"], engine.hparams["n_vocab"]
    created = int(time.time())

    async def completions(request):
        completion = protocol.completion(await read_json(request), encoder, n_ctx, n_vocab, model_name)
        events, loop = asyncio.Queue(), asyncio.get_running_loop()

        def emit(event):  # on the engine's thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is closed: nobody will read this
                job.cancel()

        job = Job(completion, emit)
        try:
            engine.submit(job)
        except Busy:
            raise APIError(503, f"the server is busy: {engine.max_queue} requests are waiting already; try again "
                           f"in a moment", "server_error", code="server_busy", headers={"Retry-After": "1"}) from None
        if completion.stream:
            return StreamingResponse(streamed(job, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        collecting = asyncio.ensure_future(collect(job, events))
        leaving = asyncio.ensure_future(disconnected(request))
        await asyncio.wait((collecting, leaving), return_when=asyncio.FIRST_COMPLETED)
        if not collecting.done():  # the client has gone: stop its work, answer nobody
            job.cancel()
            collecting.cancel()
            return Response(status_code=499)
        leaving.cancel()
        return collecting.result()

    def new_choices(completion):
        return [protocol.Choice(i, encoder, completion.logprobs is not None)
                for i in range(len(completion.prompts) * completion.n)]

    async def collect(job, events):
        """The whole response, once the engine is done with the job."""
        choices = new_choices(job.completion)
        while True:
            event = await events.get()
            if event[0] == "tokens":
                choices[event[1]].add(*event[2:])
            elif event[0] == "finish":
                choices[event[1]].finish_reason = event[2]
            elif event[0] == "error":
                return error_response(APIError(event[1], event[2], "server_error" if event[1] >= 500 else
                                               "invalid_request_error"))
            else:
                body = protocol.envelope(protocol.response_id(), model_name, [c.whole() for c in choices],
                                         protocol.usage(*event[1:]))
                return json_response(body)

    async def streamed(job, events):
        """Server-sent events: a chunk per piece of text, then the last with its finish_reason, (usage,) [DONE]."""
        id_, choices, ended = protocol.response_id(), new_choices(job.completion), False
        try:
            while not ended:
                event = await events.get()
                if event[0] in ("tokens", "finish"):
                    choice = choices[event[1]]
                    if event[0] == "tokens":
                        choice.add(*event[2:])
                        if not event[3] and not (choice.with_logprobs and event[2]):
                            continue  # nothing to send yet
                    else:
                        choice.finish_reason = event[2]
                    yield sse(protocol.envelope(id_, model_name, [choice.take()]))
                elif event[0] == "error":
                    ended = True
                    yield sse(APIError(event[1], event[2], "server_error" if event[1] >= 500 else
                                       "invalid_request_error").body())
                else:
                    ended = True
                    if job.completion.include_usage:
                        yield sse(protocol.envelope(id_, model_name, [], protocol.usage(*event[1:])))
            yield "data: [DONE]\n\n"
        finally:
            if not ended:  # the client left (or the server is stopping) before the end: stop its work
                job.cancel()

    async def chat(request):
        await read_json(request)
        raise bad(CHAT, code="chat_not_supported")

    async def list_models(request):
        return json_response(protocol.models(model_name, n_ctx, created))

    async def get_model(request):
        if request.path_params["name"] != model_name:
            raise APIError(404, f"the model {request.path_params['name']!r} does not exist here: this server serves "
                           f"{model_name!r}", "not_found_error", "model", "model_not_found")
        return json_response(protocol.model(model_name, n_ctx, created))

    async def tokenize(request):
        body = await read_json(request)
        prompt = protocol.checked_fields(body, {"prompt": str, "model": str, "add_special_tokens": bool,
                                                "return_token_strs": bool}, required="prompt")["prompt"]
        tokens = encoder.encode(prompt, allowed_special="all")
        out = {"count": len(tokens), "max_model_len": n_ctx, "tokens": tokens}
        if body.get("return_token_strs"):
            out["token_strs"] = [protocol.token_text(encoder, i) for i in tokens]
        return json_response(out)

    async def detokenize(request):
        tokens = protocol.checked_fields(await read_json(request), {"tokens": list, "model": str}, required="tokens")["tokens"]
        protocol.check_token_ids(tokens, min(n_vocab, encoder.n_vocab), "tokens")
        return json_response({"prompt": encoder.decode(tokens)})

    async def tokenizer_info(request):
        return json_response(protocol.tokenizer_info(encoder, n_ctx))

    async def health(request):
        return json_response({"status": "ok"})

    async def metrics(request):
        lines = [f"gpt2_{name}_total {value}" for name, value in engine.stats.items()]
        lines += [f"gpt2_{name} {value}" for name, value in engine.gauges().items()]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def page(request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/tokenizer_info", tokenizer_info, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/", page, methods=["GET"]),
    ]

    async def api_error(request, e):
        return error_response(e)

    async def http_error(request, e):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        message = {404: f"no route {request.url.path}: the API is under /v1 (POST /v1/completions, GET /v1/models)",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, e.detail)
        return error_response(APIError(e.status_code, message, kind))

    async def server_error(request, e):
        return error_response(APIError(500, f"the server failed on this request: {type(e).__name__}: {e}", "server_error"))

    middleware = [Middleware(KeyCheck, api_key=api_key)]
    if cors_origins:  # outermost, so that a browser's preflight is answered before the key is asked for
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                        allow_headers=["Authorization", "Content-Type"]))
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error})


class KeyCheck:
    """ASGI middleware: with an api_key, a request to any route but OPEN needs `Authorization: Bearer <api_key>`,
    compared in constant time; otherwise a 401."""

    def __init__(self, app, api_key=None):
        self.app, self.key = app, api_key and f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if self.key and scope["type"] == "http" and scope["path"] not in OPEN:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):
                error = APIError(401, "a valid API key is needed: send the header Authorization: Bearer <key>, with the "
                                 "key the server was started with (--api_key)", code="invalid_api_key")
                return await error_response(error)(scope, receive, send)
        return await self.app(scope, receive, send)
