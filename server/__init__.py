"""GPT-2 over HTTP with OpenAI's API: `python gpt2.py --serve` (server/run.py starts it).

    protocol.py   OpenAI's request and response shapes, as data; a request -> ids + generate()'s options
    engine.py     the worker that runs requests on the model, one at a time, and can stop one between steps
    app.py        HTTP only: routes, errors, server-sent events, keys, limits (Starlette on uvicorn)
    page.html     the browser page at GET /
"""
