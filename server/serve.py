"""`python gpt2.py --serve`: the model loaded once, a socket bound, one line with the URL, then uvicorn serves the app
until Ctrl-C or SIGTERM, and the engine stops with it.
"""
import contextlib
import ipaddress
import signal
import socket
import sys
import threading

import uvicorn

from server.app import create_app
from server.engine import Engine

API_KEY_ENV = "GPT2_API_KEY"  # where --api_key is read from when not given on the command line


def listen(host, port):
    """A socket listening on host:port (port 0: any free port), or an OSError that says what to do."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e}): give another --port or --host") from None
    return sock


def is_loopback(host):
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host, api_key):
    """What to say when the server listens beyond this machine with no key; None when it does not."""
    if is_loopback(host) or api_key:
        return None
    return (f"listening on {host} without an API key: anyone who can reach this machine can use the model; "
            f"give --api_key (or set {API_KEY_ENV})")


def url(sock):
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class Server(uvicorn.Server):
    """uvicorn's server, but a Ctrl-C or SIGTERM ends it with exit status 0 instead of being raised again after the
    graceful shutdown (uvicorn's way, which would end this process by that signal)."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def config(app):
    # Connections still open 3 s after a stop are cut; their jobs are stopped by the app (the client "left").
    return uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=3)


def serve(encoder, hparams, params, model_name, host, port, api_key=None, cors_origins=(), **limits):
    """limits: Engine's max_batch, max_queue, prefix_cache_mb."""
    sock = listen(host, port)
    warning = exposure_warning(host, api_key)
    if warning:
        print(f"gpt2.py: warning: {warning}", file=sys.stderr)
    engine = Engine(encoder, hparams, params, **limits)
    server = Server(config(create_app(engine, model_name, api_key, cors_origins)))
    print(f"gpt2.py: serving {model_name} at {url(sock)} (OpenAI's API under /v1, a page at /); Ctrl-C stops",
          flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
        sock.close()
    print("gpt2.py: stopped", file=sys.stderr)
