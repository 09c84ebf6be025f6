"""The worker behind the server: continuous batching. One thread runs the engine loop; each turn it reads a chunk of
one waiting prompt, then advances every running choice by one token in one batched forward pass (gpt2.gpt2 with a
KV cache and a mask: rows of different lengths, each with its own positions). A prompt that is read joins the batch
at the next step, a finished one leaves it at once, and a request whose client left is dropped between two steps.

Each prompt's n choices are a Group: one prefill, its KV cache copied for each choice, and one random generator
drawing for them in row order, step by step, exactly as gpt2.generate would run them alone; so a request gets
what it would get alone (greedy ids equal; a seeded draw equal unless float32 rounding moves a token across the
draw, which the tests' margins rule out; log-probs within float32 rounding: a relative and absolute 1e-5). Beam search is run whole, alone, between steps.

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

from decoding import Controls, chooser
from generation import pick
from gpt2 import generate_stream, gpt2, layer_norm, target_logprobs, transformer, unembed
from kvcache import kv_cache_bytes, merge_rows
from server.prefix_cache import MAX_TOP, Entry, PrefixCache
from textstream import TextStream, whole_characters

MAX_QUEUE = 64  # requests waiting to start; more are refused (HTTP 503) rather than piled up
MAX_BATCH = 16  # choices generated together; a request waits while its choices would not fit
PREFIX_CACHE_MB = 1024  # the prefix cache's budget
CHUNK = 256  # prompt tokens read per turn of the loop, so that running streams keep flowing


class Busy(Exception):
    """The queue is full: try again later."""


class Job:
    def __init__(self, completion, emit):
        self.completion, self.emit = completion, emit
        self.cancelled = threading.Event()  # set when nobody waits for the answer any more
        self.steps = 0  # generation steps taken for it
        self.prompts_left, self.generated = len(completion.prompts), 0
        self.dropped = False  # counted among the cancelled

    def cancel(self):
        self.cancelled.set()


class Group:
    """One prompt's choices in the batch: their histories, text streams, random generator and step."""

    def __init__(self, job, ids, choices, encoder, logits):
        c = job.completion
        o = c.options
        controls = Controls.checked(o["repetition_penalty"], o["no_repeat_ngram_size"], None, o["min_new_tokens"],
                                    len(logits), o["eos_token_id"], o["logit_bias"], o["presence_penalty"],
                                    o["frequency_penalty"])
        self.job, self.choices, self.n_prompt = job, choices, len(ids)
        self.choose = chooser(controls, o["temperature"], o["top_k"], o["top_p"], np.random.default_rng(c.seed))
        self.eos = o["eos_token_id"] if o["stop_at_eot"] else None
        self.history = [list(ids) for _ in choices]
        self.texts = [TextStream(encoder, c.stop, o["stop_at_eot"], ids if c.echo else ()) for _ in choices]
        self.ended, self.done = np.zeros(len(choices), dtype=bool), [False] * len(choices)
        self.step, self.logits = 0, np.repeat(logits[None], len(choices), axis=0)  # [n, n_vocab]

    def advance(self):
        """Choose every choice's next token and send it; True while the group goes on (its next ids: .next_ids)."""
        job, c = self.job, self.job.completion
        self.next_ids, out = pick(self.choose, self.history, self.step, self.logits, self.ended, c.logprobs)
        send(job, self.choices, self.texts, self.done, out)
        if self.eos is not None:
            self.ended |= self.next_ids == self.eos
        job.steps += 1
        if self.ended.all() or all(self.done) or self.step == c.max_tokens - 1:
            return False
        for ids, i in zip(self.history, self.next_ids):
            ids.append(int(i))
        self.step += 1
        return True

    def finish(self):
        finish(self.job, self.choices, self.texts, self.done)


def send(job, choices, texts, done, out):
    """Send what one step chose for each choice (generation.steps' output: None, an id, or (id, Logprob)) with the
    text it lets out; a choice whose text ends (end token, stop string) is marked done and finished "stop"."""
    for r, token in enumerate(out):
        if token is None or done[r]:
            continue
        token_id, logprob = token if job.completion.logprobs is not None else (token, None)
        job.generated += 1
        job.emit(("tokens", choices[r], [(token_id, *(logprob[:2] if logprob else (None, None)))],
                  texts[r].add(token_id)))
        if texts[r].done:
            done[r] = True
            job.emit(("finish", choices[r], "stop"))


def finish(job, choices, texts, done):
    """The choices not done yet end at max_tokens: the text they held back, then "length"."""
    for r, text in enumerate(texts):
        if not done[r]:
            rest = text.flush()
            if rest:
                job.emit(("tokens", choices[r], [], rest))
            job.emit(("finish", choices[r], "length"))


class Prefill:
    """A prompt being read, CHUNK tokens a turn, from the longest prefix the prefix cache holds."""

    def __init__(self, job, ids, choices, engine):
        self.job, self.ids, self.choices = job, ids, choices
        n_top = job.completion.logprobs if job.completion.echo else None
        self.n_top = None if n_top is None or len(ids) < 2 else n_top
        entry, n = engine.prefix.longest(ids, self.n_top is not None)
        self.entry = entry if entry is not None and n == len(ids) == len(entry.ids) else None  # the whole prompt
        reused = 0 if self.entry else max(n - 1, 0)  # from one before the shared part: its output reads the rest
        if self.entry or reused:
            engine.prefix.hits += 1
            engine.prefix.reused_tokens += len(ids) if self.entry else reused
        self.cache = self.entry.cache if self.entry else entry.cache.first(reused) if reused else []
        self.at = len(ids) if self.entry else reused
        # the echoed prompt's log-probs, part by part: the prefix's from the entry, then a chunk's at a time
        self.echo = [[part[:reused]] for part in entry.echo] if reused and self.n_top is not None else [[], [], []]
        self.last_logits = self.entry.last_logits if self.entry else None

    def advance(self, params, n_head):
        """Read the next chunk; True once the whole prompt is read."""
        if self.at == len(self.ids):
            return True
        stop = min(self.at + CHUNK, len(self.ids))
        chunk = np.asarray(self.ids[self.at : stop])[None]
        last = stop == len(self.ids)
        if self.n_top is None:  # only the last position's output is needed, and only at the end
            x, self.cache = transformer(chunk, params["wte"], params["wpe"], params["blocks"], n_head, self.cache,
                                        n_out=1)
            if last:
                x = layer_norm(x[0], **params["ln_f"])
        else:  # every position's log-probs of the token after it
            x, self.cache = transformer(chunk, params["wte"], params["wpe"], params["blocks"], n_head, self.cache)
            x = layer_norm(x[0], **params["ln_f"])
            targets = np.asarray(self.ids[self.at + 1 : stop + 1])
            scored = target_logprobs(x[: len(targets)], targets, params["wte"], params.get("lm_head"), n_top=MAX_TOP)
            for part, new in zip(self.echo, scored):
                part.append(new)
        if last:
            self.last_logits = unembed(x[-1:], params["wte"], params.get("lm_head"))[0]
        self.at = stop
        return last

    def entry_to_keep(self):
        """The prefix cache's entry for this prompt, its KV cache copied to exactly its size."""
        if self.entry is not None:
            return self.entry
        echo = None if self.n_top is None else tuple(np.concatenate(part) for part in self.echo)
        return Entry(tuple(self.ids), self.cache.take([0], capacity=len(self.ids)), self.last_logits, echo)

    def send_echo(self, encoder):
        """Send the prompt to each choice: its tokens, and its text up to its last whole character (the generated
        text finishes the last one)."""
        tokens, text = self.echoed(), whole_characters(self.ids, encoder)
        for choice in self.choices:
            self.job.emit(("tokens", choice, tokens, text))

    def echoed(self):
        """The prompt's tokens as ("tokens" event) triples: the first with no log-prob."""
        tokens = [(i, None, None) for i in self.ids]
        if self.n_top is not None:
            logprobs, top_ids, top_logprobs = (np.concatenate(part) for part in self.echo) if self.entry is None \
                else self.entry.echo
            n = self.n_top
            tokens[1:] = [(i, float(lp), list(zip(t[:n].tolist(), v[:n].tolist())))
                          for i, lp, t, v in zip(self.ids[1:], logprobs, top_ids, top_logprobs)]
        return tokens


class Engine:
    """Runs Jobs on the model in a thread of its own; `stats` counts what it did (GET /metrics shows them)."""

    def __init__(self, encoder, hparams, params, max_queue=MAX_QUEUE, max_batch=MAX_BATCH,
                 prefix_cache_mb=PREFIX_CACHE_MB):
        self.encoder, self.hparams, self.params, self.n_head = encoder, hparams, params, hparams["n_head"]
        self.jobs, self.max_queue, self.max_batch = queue.Queue(), max_queue, max_batch
        self.prefix = PrefixCache(prefix_cache_mb << 20)
        self.waiting, self.prefills, self.groups = [], [], []  # admitted jobs, prompts being read, rows running
        self.cache, self.mask, self.closing = None, None, False  # the batch's KV cache and mask [B, width]
        self.stats = dict.fromkeys(("requests", "cancelled", "failed", "prompt_tokens", "generated_tokens", "steps"), 0)
        self.thread = threading.Thread(target=self._loop, name="gpt2-engine", daemon=True)
        self.thread.start()

    @property
    def running(self):
        return len(self.groups) + len(self.prefills)

    def gauges(self):
        """What /metrics shows beside the counters."""
        n_layer, n_embd = self.hparams["n_layer"], self.hparams["n_embd"]
        rows = sum(len(g.choices) for g in self.groups)
        return {"queued": self.jobs.qsize() + len(self.waiting), "running_rows": rows,
                "kv_cache_bytes": 0 if self.cache is None else kv_cache_bytes(n_layer, n_embd, rows, self.cache.n_past),
                "prefix_cache_bytes": self.prefix.nbytes, "prefix_cache_entries": len(self.prefix.entries),
                "prefix_cache_hits": self.prefix.hits, "prefix_cache_reused_tokens": self.prefix.reused_tokens}

    def submit(self, job):
        if self.jobs.qsize() + len(self.waiting) >= self.max_queue:
            raise Busy()
        self.jobs.put(job)

    def close(self):
        """Stop every job, running and waiting; the thread ends."""
        self.closing = True
        self.jobs.put(None)
        self.thread.join()

    def _loop(self):
        while not self.closing:
            self._take(block=not (self.waiting or self.prefills or self.groups))
            self._drop_cancelled()
            try:
                self._admit()
                if self.prefills:
                    self._read()
                    self._drop_cancelled()
                if self.groups:
                    self._step()
            except Exception as e:  # the server's fault: every running job fails, said, and the loop goes on
                traceback.print_exc(file=sys.stderr)
                for job in {p.job for p in self.prefills} | {g.job for g in self.groups}:
                    self._fail(job, 500, f"the server failed on this request: {type(e).__name__}: {e}")
                self.prefills, self.groups, self.cache, self.mask = [], [], None, None
        self._take(block=False)
        for job in {*self.waiting, *(p.job for p in self.prefills), *(g.job for g in self.groups)}:
            self._fail(job, 503, "the server is stopping: this request was not finished; send it again once the "
                                 "server is back")

    def _take(self, block):
        """Move queued jobs to `waiting` (waiting for one when there is nothing to do)."""
        while True:
            try:
                job = self.jobs.get(block=block)
            except queue.Empty:
                return
            if job is None:
                self.closing = True
                return
            self.waiting.append(job)
            block = False

    def _drop_cancelled(self):
        """Drop every part of the jobs whose clients left."""
        cancelled = {j for j in [*self.waiting, *(p.job for p in self.prefills), *(g.job for g in self.groups)]
                     if j.cancelled.is_set() and not j.dropped}
        for job in cancelled:
            job.dropped = True
            self.stats["cancelled"] += 1
        self.waiting = [j for j in self.waiting if not j.cancelled.is_set()]
        self.prefills = [p for p in self.prefills if not p.job.cancelled.is_set()]
        gone = [r for r, (g, _) in enumerate(self._rows()) if g.job.cancelled.is_set()]
        if gone:
            self._leave(gone)

    def _rows(self):
        return [(g, r) for g in self.groups for r in range(len(g.choices))]

    def _admit(self):
        """Start reading the prompts of waiting jobs while their choices fit in the batch (in the order they came)."""
        while self.waiting and not self.closing:
            job = self.waiting[0]
            c = job.completion
            rows = sum(len(g.choices) for g in self.groups) + sum(len(p.choices) for p in self.prefills)
            if rows and rows + c.n * (c.max_tokens > 0) > self.max_batch:
                return
            self.waiting.pop(0)
            self.stats["requests"] += 1
            self.stats["prompt_tokens"] += sum(map(len, c.prompts))
            if c.options["num_beams"] > 1 and c.max_tokens:
                self._search(job)
                continue
            for p, ids in enumerate(c.prompts):
                self.prefills.append(Prefill(job, ids, list(range(p * c.n, (p + 1) * c.n)), self))

    def _read(self):
        """A chunk of the first prompt being read; a prompt read whole is echoed and joins the batch."""
        prefill = self.prefills[0]
        if not prefill.advance(self.params, self.n_head):
            return
        self.prefills.pop(0)
        self.prefix.add(prefill.entry_to_keep())
        job, c = prefill.job, prefill.job.completion
        if c.echo:
            prefill.send_echo(self.encoder)
        if c.max_tokens == 0:
            rest = self.encoder.decode(prefill.ids)[len(whole_characters(prefill.ids, self.encoder)):]
            for choice in prefill.choices:
                if rest:
                    job.emit(("tokens", choice, [], rest))
                job.emit(("finish", choice, "length"))
            self._prompt_done(job)
            return
        try:
            group = Group(job, prefill.ids, prefill.choices, self.encoder, prefill.last_logits)
        except ValueError as e:  # what the request asks cannot be done (the protocol let it through)
            self._fail(job, 400, str(e))
            return
        self._join(group, prefill.cache.take([0] * len(prefill.choices)))

    def _join(self, group, cache):
        """Add a group's rows (cache: their KV cache, every position real) to the batch, at its end."""
        n, B = len(group.choices), sum(len(g.choices) for g in self.groups)
        parts = [(list(range(B, B + n)), cache, np.ones((n, cache.n_past), dtype=bool))]
        if self.groups:
            parts.insert(0, (list(range(B)), self.cache, self.mask))
        self.cache, self.mask = merge_rows(parts, B + n, self.hparams["n_ctx"])
        self.groups.append(group)
        self._advance(group)  # its first token, from the prompt's last logits

    def _step(self):
        """One token for every row: the batch's forward pass, then each group chooses (and may finish)."""
        tokens = np.array([[g.next_ids[r]] for g, r in self._rows()])
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), dtype=bool)], axis=1)
        logits, self.cache = gpt2(tokens, **self.params, n_head=self.n_head, kvcache=self.cache, mask=self.mask,
                                  last_only=True)
        self.stats["steps"] += 1
        self.stats["generated_tokens"] += len(tokens)
        first = 0
        for group in list(self.groups):
            group.logits = logits[first : first + len(group.choices), -1]
            first += len(group.choices)
            self._advance(group)

    def _advance(self, group):
        """The group's next tokens; it leaves the batch when it is done, or when choosing fails (its job fails)."""
        if group.job.cancelled.is_set():  # its client left during this step: it leaves before the next
            return
        try:
            going = group.advance()
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self._fail(group.job, 500, f"the server failed on this request: {type(e).__name__}: {e}")
            self._leave([i for i, (g, _) in enumerate(self._rows()) if g is group])
            return
        self.stepped(group.job)
        if not going:
            self._end(group)

    def _end(self, group):
        group.finish()
        rows = self._rows()
        self._leave([i for i, (g, _) in enumerate(rows) if g is group])
        self._prompt_done(group.job)

    def _leave(self, gone):
        """Take these batch rows out of the batch (their groups with them)."""
        rows, gone = self._rows(), set(gone)
        keep = [i for i in range(len(rows)) if i not in gone]
        leaving = {rows[i][0] for i in gone}
        self.groups = [g for g in self.groups if g not in leaving]
        if not keep:
            self.cache = self.mask = None
            return
        mask = self.mask[keep]
        start = int(mask.any(axis=0).argmax())  # the columns before are padding in every row that stays
        self.cache, self.mask = self.cache.take(keep, start), mask[:, start:]

    def _prompt_done(self, job):
        job.prompts_left -= 1
        if job.prompts_left == 0 and not job.cancelled.is_set():
            job.emit(("end", sum(map(len, job.completion.prompts)), job.generated))

    def _fail(self, job, status, message):
        """End the job with an error; the rest of it is dropped (as for a client that left, but not counted so)."""
        self.stats["failed"] += 1
        job.dropped = True
        job.cancel()
        job.emit(("error", status, message))

    def _search(self, job):
        """Beam search, whole and alone (its ids come only once the search is done): gpt2.generate_stream."""
        c = job.completion
        try:
            for p, ids in enumerate(c.prompts):
                choices = range(p * c.n, (p + 1) * c.n)
                if c.echo:
                    prefill = Prefill(job, ids, list(choices), self)
                    while not prefill.advance(self.params, self.n_head):
                        pass
                    self.prefix.add(prefill.entry_to_keep())
                    prefill.send_echo(self.encoder)
                steps = generate_stream([ids], self.params, self.n_head, c.max_tokens, num_return_sequences=c.n,
                                        logprobs=c.logprobs, **c.options)
                texts = [TextStream(self.encoder, c.stop, c.options["stop_at_eot"], ids if c.echo else ()) for _ in choices]
                done = [False] * c.n
                for step in steps:
                    send(job, choices, texts, done, step)
                finish(job, choices, texts, done)
                self._prompt_done(job)
        except ValueError as e:
            self._fail(job, 400, str(e))

    def stepped(self, job):
        """Called after each batch step, once for each job with choices in it (tests hold the engine here)."""
