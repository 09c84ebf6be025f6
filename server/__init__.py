"""GPT-2 over HTTP with OpenAI's API: `python gpt2.py --serve` (serve.py starts it).

    protocol.py      OpenAI's request and response shapes, as data; a request -> ids + generate()'s options
    engine.py        continuous batching: requests join and leave one batch step by step; knows ids, not HTTP
    prefix_cache.py  the keys and values of recent prompts, reused by prompts that begin with one
    app.py           HTTP only: routes, errors, server-sent events, keys, limits (Starlette on uvicorn)
    serve.py         listen, print the URL, serve until Ctrl-C or SIGTERM
    page.html        the browser page at GET /
"""
