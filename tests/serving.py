"""The real server, in this process: the app on uvicorn in a thread of its own, on 127.0.0.1 at a free port.

`serving(encoder, hparams, params)` yields a Served with its .url and .engine; tests reach it over real HTTP.
Tests that must stop the engine at a known point wrap Engine.stepped (see Gate).
"""
import contextlib
import threading
import time

from server.app import create_app
from server.engine import Engine
from server.serve import Server, config, listen, url

WAIT = 60  # seconds any wait here may take before the test fails: a guard against hanging, never a timing


class Served:
    def __init__(self, url, engine):
        self.url, self.engine = url, engine


@contextlib.contextmanager
def serving(encoder, hparams, params, name="tiny", api_key=None, cors_origins=(), **limits):
    """limits: Engine's max_queue, max_batch, prefix_cache_mb."""
    sock = listen("127.0.0.1", 0)
    engine = Engine(encoder, hparams, params, **limits)
    server = Server(config(create_app(engine, name, api_key, cors_origins)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield Served(url(sock), engine)
    finally:
        engine.close()
        server.should_exit = True
        thread.join(WAIT)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


class Gate:
    """Holds the engine after a chosen step of a job until the test opens it: Engine.stepped, wrapped.

    gate.reached is set when the engine waits at the gate (gate.jobs[0] is the job held); it goes on once
    gate.opened is set."""

    def __init__(self, engine, at_step=1):
        self.engine, self.at_step = engine, at_step
        self.reached, self.opened, self.jobs = threading.Event(), threading.Event(), []
        self.stepped = engine.stepped
        engine.stepped = self.step

    def step(self, job):
        self.stepped(job)
        if job.steps == self.at_step and job not in self.jobs:
            self.jobs.append(job)
            self.reached.set()
            assert self.opened.wait(WAIT), "the gate was never opened"

    def close(self):
        self.engine.stepped = self.stepped
        self.opened.set()


def until(condition):
    """Wait for condition() to hold: for a state the test knows will come, WAIT seconds at most."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)
