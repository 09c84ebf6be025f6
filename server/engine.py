"""The worker behind the server: one thread runs the requests on the model, one at a time in the order they came,
so each gets exactly what it would get alone; a request can be stopped between two steps (its client left).

It knows token ids, the tokenizer (stop strings are text) and generate()'s options; never HTTP or JSON. A Job
carries a protocol.Completion in and sends events out through its `emit`, called on the worker's thread:
    ("tokens", choice, [(id, logprob, top), ...], text)  tokens of a choice and the text they let out; logprob and
                                                         top [(id, logprob), ...] are None when not asked for, and
                                                         for the first token of an echoed prompt (no context)
    ("finish", choice, reason)                           "stop" (end token or stop string) or "length"
    ("error", status, message)                           the request failed: 400 its own fault, 500 the server's
    ("end", prompt_tokens, completion_tokens)            every choice is finished
Choices are numbered prompt by prompt, then sample by sample.
"""
import queue
import sys
import threading
import traceback

import numpy as np

from cli import check_memory
from gpt2 import generate_stream, score
from textstream import TextStream, whole_characters

MAX_QUEUE = 64  # requests waiting beyond the one running; more are refused (HTTP 503) rather than piled up


class Busy(Exception):
    """The queue is full: try again later."""


class Job:
    def __init__(self, completion, emit):
        self.completion, self.emit = completion, emit
        self.cancelled = threading.Event()  # set when nobody waits for the answer any more
        self.steps = 0  # generation steps taken for it

    def cancel(self):
        self.cancelled.set()


class Engine:
    """Runs Jobs on the model in a thread of its own; `stats` counts what it did (GET /metrics shows them)."""

    def __init__(self, encoder, hparams, params, max_queue=MAX_QUEUE):
        self.encoder, self.hparams, self.params, self.n_head = encoder, hparams, params, hparams["n_head"]
        self.jobs = queue.Queue(max_queue)
        self.running = None
        self.stats = dict.fromkeys(("requests", "cancelled", "failed", "prompt_tokens", "generated_tokens", "steps"), 0)
        self.thread = threading.Thread(target=self._loop, name="gpt2-engine", daemon=True)
        self.thread.start()

    def submit(self, job):
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise Busy() from None

    def close(self):
        """Stop the job running and every one waiting; the thread ends."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
        if self.running is not None:
            self.running.cancel()
        self.jobs.put(None)
        self.thread.join()

    def _loop(self):
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                self.stats["cancelled"] += 1
                continue
            self.running = job
            self.stats["requests"] += 1
            try:
                self.run(job)
            except ValueError as e:  # the model's own checks: what the request asks cannot be done
                self.stats["failed"] += 1
                job.emit(("error", 400, str(e)))
            except Exception as e:  # the server's fault: said, and the next job runs
                self.stats["failed"] += 1
                traceback.print_exc(file=sys.stderr)
                job.emit(("error", 500, f"the server failed on this request: {type(e).__name__}: {e}"))
            finally:
                self.running = None
            if job.cancelled.is_set():
                self.stats["cancelled"] += 1

    def run(self, job):
        c = job.completion
        generated = 0
        for p, ids in enumerate(c.prompts):
            choices = range(p * c.n, (p + 1) * c.n)
            if c.echo:
                self.echo(job, ids, choices)
            if c.max_tokens:
                generated += self.generate(job, ids, choices)
            else:
                rest = self.encoder.decode(ids)[len(whole_characters(ids, self.encoder)):]  # an unfinished character
                for choice in choices:
                    if rest:
                        job.emit(("tokens", choice, [], rest))
                    job.emit(("finish", choice, "length"))
            if job.cancelled.is_set():
                return
        self.stats["prompt_tokens"] += sum(map(len, c.prompts))
        job.emit(("end", sum(map(len, c.prompts)), generated))

    def echo(self, job, ids, choices):
        """The prompt's tokens, its text up to its last whole character (the generated text finishes the last one),
        and with logprobs each token's log-prob given those before it (score())."""
        c = job.completion
        tokens = [(i, None, None) for i in ids]
        if c.logprobs is not None and len(ids) > 1:
            logprobs, top_ids, top_logprobs = score(ids, self.params, self.n_head, n_top=c.logprobs)
            tokens[1:] = [(i, float(lp), list(zip(t.tolist(), v.tolist())))
                          for i, lp, t, v in zip(ids[1:], logprobs, top_ids, top_logprobs)]
        text = whole_characters(ids, self.encoder)
        for choice in choices:
            job.emit(("tokens", choice, tokens, text))

    def generate(self, job, ids, choices):
        """Generate the choices of one prompt (one prefill, n rows), each ending at its end token, its first stop
        string or max_tokens; checks for cancellation before every step. Returns how many tokens were generated."""
        c = job.completion
        check_memory(max(c.n, c.options["num_beams"]), len(ids), c.max_tokens, self.hparams,
                      ["lower n", "lower max_tokens", "shorten the prompt"])
        steps = generate_stream([ids], self.params, self.n_head, c.max_tokens, rng=np.random.default_rng(c.seed),
                                num_return_sequences=c.n, logprobs=c.logprobs, **c.options)
        after = ids if c.echo else ()
        texts = [TextStream(self.encoder, c.stop, c.options["stop_at_eot"], after) for _ in choices]
        done, generated = [False] * len(texts), 0
        try:
            while not all(done) and not job.cancelled.is_set():
                step = next(steps, None)
                if step is None:
                    break
                for r, token in enumerate(step):
                    if token is None or done[r]:
                        continue
                    token_id, logprob = token if c.logprobs is not None else (token, None)
                    text = texts[r].add(token_id)
                    generated += 1
                    job.emit(("tokens", choices[r], [(token_id, *(logprob[:2] if logprob else (None, None)))], text))
                    if texts[r].done:
                        done[r] = True
                        job.emit(("finish", choices[r], "stop"))
                self.stats["generated_tokens"] += sum(token is not None for token in step)
                self.stepped(job)
        finally:
            steps.close()
        if job.cancelled.is_set():
            return generated
        for r, text in enumerate(texts):
            if not done[r]:
                rest = text.flush()
                if rest:
                    job.emit(("tokens", choices[r], [], rest))
                job.emit(("finish", choices[r], "length"))
        return generated

    def stepped(self, job):
        """Called after each generation step of a job."""
        job.steps += 1
        self.stats["steps"] += 1
