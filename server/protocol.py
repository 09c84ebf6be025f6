"""OpenAI's completions API as this server speaks it: the request's fields, written down once as data, checked and
turned into token ids and generate()'s options; and the response's shapes (choices, legacy log-probs, usage).

It knows the tokenizer and the model's sizes, never the model itself nor HTTP: app.py feeds it parsed JSON and
sends what it returns; engine.py runs what it makes (a Completion).
"""
import codecs
import math
import time
import uuid
from typing import NamedTuple

from decoding import is_number, is_whole
from encoder import ENDOFTEXT

MAX_N = 16  # choices per prompt
MAX_LOGPROBS = 5  # the most likely tokens listed beside each one, as OpenAI allows
MAX_STOP = 16  # stop strings (OpenAI allows 4; lm-eval sends a task's until list and <|endoftext|>, 6 for humaneval)
NEG_INF = -9999.0  # what a log-prob of -inf is sent as: JSON has no infinity (vLLM sends the same number)


class APIError(Exception):
    """A request the server will not serve: HTTP `status` and OpenAI's error object."""

    def __init__(self, status, message, type="invalid_request_error", param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message, param=None, code=None):
    return APIError(400, message, param=param, code=code)


# ---- The request's fields: name -> (check(value) -> True if acceptable, what it must be, default).
# Those below the line are this engine's own controls, named as vLLM names them.

def number_in(low, high, open_low=False):
    return lambda x: is_number(x) and math.isfinite(x) and (low < x if open_low else low <= x) and x <= high


def whole_in(low, high=math.inf):
    return lambda x: is_whole(x, low) and x <= high


def one_of(*types):
    return lambda x: isinstance(x, types) and not (bool not in types and isinstance(x, bool))


def optional(check):
    return lambda x: x is None or check(x)


FIELDS = {
    "model": (optional(one_of(str)), "a string, the name GET /v1/models lists", None),
    "prompt": (lambda x: True, "text, a list of texts, a list of token ids, or a list of lists of token ids", None),
    "max_tokens": (optional(whole_in(0)), "a whole number of tokens to generate, 0 only with echo", 16),
    "temperature": (optional(number_in(0, 2)), "a number from 0 (greedy) to 2", 1.0),
    "top_p": (optional(number_in(0, 1, open_low=True)), "a number above 0 and at most 1", 1.0),
    "n": (optional(whole_in(1, MAX_N)), f"a whole number from 1 to {MAX_N}", 1),
    "stream": (optional(one_of(bool)), "true or false", False),
    "stream_options": (optional(lambda x: isinstance(x, dict) and set(x) <= {"include_usage"}
                                and isinstance(x.get("include_usage", False), bool)),
                       'an object such as {"include_usage": true}', None),
    "stop": (optional(lambda x: isinstance(x, str) or (isinstance(x, list) and len(x) <= MAX_STOP
                                                        and all(isinstance(s, str) for s in x))),
             f"a string or a list of at most {MAX_STOP} strings", None),
    "seed": (optional(whole_in(0, 2**63 - 1)), "a whole number from 0 to 2**63 - 1", None),
    "echo": (optional(one_of(bool)), "true or false", False),
    "logprobs": (optional(whole_in(0, MAX_LOGPROBS)), f"a whole number from 0 to {MAX_LOGPROBS}", None),
    "presence_penalty": (optional(number_in(-2, 2)), "a number from -2 to 2", 0.0),
    "frequency_penalty": (optional(number_in(-2, 2)), "a number from -2 to 2", 0.0),
    "logit_bias": (optional(lambda x: isinstance(x, dict) and all(number_in(-100, 100)(b) for b in x.values())),
                   'an object mapping token ids to numbers from -100 to 100, such as {"50256": -100}', None),
    "user": (optional(one_of(str)), "a string", None),
    "best_of": (optional(whole_in(1, MAX_N)), "the same whole number as n: this server makes no extra candidates", None),
    "suffix": (lambda x: x is None, "null: GPT-2 writes only after its prompt, never into a gap", None),
    # ---- this engine's own controls
    "top_k": (optional(lambda x: is_whole(x, 1) or (is_whole(x, -1) and x == -1)), "a whole number of at least 1 "
              "(-1 or null: all tokens)", None),
    "repetition_penalty": (optional(number_in(0, 1e6, open_low=True)), "a number above 0 (1: none)", 1.0),
    "no_repeat_ngram_size": (optional(whole_in(0)), "a whole number (0: off)", 0),
    "min_tokens": (optional(whole_in(0)), "a whole number of tokens before <|endoftext|> may come", 0),
    "ignore_eos": (optional(one_of(bool)), "true or false", False),
    "num_beams": (optional(whole_in(1, MAX_N)), f"a whole number from 1 (no beam search) to {MAX_N}", 1),
    "length_penalty": (optional(number_in(-1e6, 1e6)), "a number", 1.0),
    "early_stopping": (optional(lambda x: isinstance(x, bool) or x == "never"), 'true, false or "never"', False),
}


class Completion(NamedTuple):
    """A checked completions request, in ids and generate()'s terms."""
    prompts: list  # [[id, ...], ...]
    n: int  # choices per prompt
    max_tokens: int
    echo: bool
    logprobs: int  # None: none listed
    stop: list  # strings
    stream: bool
    include_usage: bool
    options: dict  # generate_stream's options, for every prompt alike
    seed: int  # None: a fresh draw


def completion(body, encoder, n_ctx, n_vocab, model_name):
    """A parsed JSON body -> Completion, or an APIError (400, or 404 for another model) naming the field at fault."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object, such as {\"prompt\": \"Hello\", \"max_tokens\": 16}")
    for name in body:
        if name not in FIELDS:
            raise bad(f"unknown field {name!r}: this server takes {', '.join(FIELDS)}", name, "unknown_field")
    field = {}
    for name, (check, what, default) in FIELDS.items():
        value = body.get(name)
        if not check(value):
            raise bad(f"{name} must be {what}; got {value!r}", name)
        field[name] = default if value is None else value
    if field["model"] is not None and field["model"] != model_name:
        raise APIError(404, f"the model {field['model']!r} does not exist here: this server serves {model_name!r}",
                       "not_found_error", "model", "model_not_found")
    if "prompt" not in body:
        raise bad("prompt is missing: give the text to continue", "prompt")
    n = field["n"]
    if field["best_of"] is not None and field["best_of"] != n:
        raise bad(f"best_of {field['best_of']} with n {n}: this server returns every choice it makes, so best_of can "
                  f"only equal n; drop best_of", "best_of")
    if field["stream_options"] is not None and not field["stream"]:
        raise bad("stream_options is only for stream: true", "stream_options")
    prompts = prompt_ids(body["prompt"], encoder, min(n_vocab, encoder.n_vocab))
    max_tokens, echo = field["max_tokens"], field["echo"]
    if max_tokens == 0 and not echo:
        raise bad("max_tokens 0 generates nothing: give at least 1, or set echo to read the prompt's log-probs",
                  "max_tokens")
    for ids in prompts:
        if len(ids) + max_tokens > n_ctx:
            raise bad(f"this model's context is {n_ctx} tokens (n_ctx), but the prompt ({len(ids)} tokens) plus "
                      f"max_tokens ({max_tokens}) is {len(ids) + max_tokens}: shorten the prompt or lower max_tokens",
                      "max_tokens", "context_length_exceeded")
    temperature, num_beams = float(field["temperature"]), field["num_beams"]
    if num_beams > 1 and temperature > 0:
        raise bad(f"num_beams {num_beams} is a search, not a draw: give temperature 0 with it", "temperature")
    if num_beams == 1 and temperature == 0 and n > 1:
        raise bad(f"n {n} at temperature 0 would be {n} copies of one greedy text: give a temperature above 0 to "
                  f"sample, or num_beams to search", "n")
    if num_beams > 1 and n > num_beams:
        raise bad(f"n {n} is more than num_beams {num_beams}: the search keeps only {num_beams} texts", "n")
    if num_beams == 1 and (field["length_penalty"] != 1.0 or field["early_stopping"] is not False):
        raise bad("length_penalty and early_stopping only apply to beam search: give num_beams above 1", "num_beams")
    eos = encoder.eot_token
    if field["min_tokens"] and eos is None:
        raise bad("min_tokens keeps <|endoftext|> away, but this model's vocabulary has none", "min_tokens")
    bias = {}
    for key, value in (field["logit_bias"] or {}).items():
        token = int(key) if isinstance(key, str) and key.isdigit() else None
        if token is None or token >= n_vocab:
            raise bad(f"logit_bias keys must be token ids in [0, {n_vocab}), such as \"50256\"; got {key!r}", "logit_bias")
        bias[token] = float(value)
    top_k = None if field["top_k"] in (None, -1) else field["top_k"]
    stop = [field["stop"]] if isinstance(field["stop"], str) else list(field["stop"] or [])
    if "" in stop:
        raise bad("an empty stop string matches everywhere: give some text", "stop")
    options = dict(temperature=temperature, top_k=top_k, top_p=float(field["top_p"]), stop_at_eot=not field["ignore_eos"],
                   repetition_penalty=float(field["repetition_penalty"]),
                   no_repeat_ngram_size=field["no_repeat_ngram_size"], min_new_tokens=field["min_tokens"],
                   num_beams=num_beams, length_penalty=float(field["length_penalty"]),
                   early_stopping=field["early_stopping"], logit_bias=bias,
                   presence_penalty=float(field["presence_penalty"]), frequency_penalty=float(field["frequency_penalty"]),
                   eos_token_id=eos)
    include_usage = bool((field["stream_options"] or {}).get("include_usage", False))
    return Completion(prompts, n, max_tokens, echo, field["logprobs"], stop, field["stream"], include_usage, options,
                      field["seed"])


def prompt_ids(prompt, encoder, n_vocab):
    """The four forms of `prompt` -> a list of prompts, each a non-empty list of token ids.

    Text is read as HF's tokenizer (and so vLLM) reads it: "<|endoftext|>" in it is the special token.
    """
    def ids_of(item, where):
        if isinstance(item, str):
            ids = encoder.encode(item, allowed_special="all")
        else:
            ids = check_token_ids(item, n_vocab, "prompt", where)
        if not ids:
            raise bad(f"{where} is empty: give some text, or \"<|endoftext|>\" to begin a new document", "prompt")
        return ids

    def is_ids(x):
        return isinstance(x, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)

    if isinstance(prompt, str):
        return [ids_of(prompt, "the prompt")]
    if isinstance(prompt, list) and prompt and is_ids(prompt):
        return [ids_of(prompt, "the prompt")]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or (is_ids(p) and p) for p in prompt):
        return [ids_of(p, f"prompt {i}") for i, p in enumerate(prompt)]
    if prompt == []:
        raise bad("the prompt list is empty: give at least one prompt", "prompt")
    raise bad("prompt must be a string, a list of strings, a list of token ids, or a list of lists of token ids; "
              f"got {short(prompt)}", "prompt")


def check_token_ids(ids, n_vocab, param, where=None):
    """ids, if every one is a token id in [0, n_vocab); otherwise a 400 naming the first that is not."""
    for i in ids:
        if not whole_in(0)(i) or i >= n_vocab:
            raise bad(f"{where or param} holds {short(i)}, which is not a token id in [0, {n_vocab})", param)
    return list(ids)


def checked_fields(body, types, required):
    """A body of the tokenizer routes: an object with only these fields ({name: type}), `required` among them."""
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON object with {required!r}")
    for name, value in body.items():
        if name not in types:
            raise bad(f"unknown field {name!r}: give {', '.join(types)}", name, "unknown_field")
        if not one_of(types[name])(value):
            raise bad(f"{name} must be a {types[name].__name__}; got {short(value)}", name)
    if required not in body:
        raise bad(f"{required} is missing", required)
    return body


def tokenizer_info(encoder, n_ctx):
    """GET /tokenizer_info, as vLLM shapes it: lm-eval's remote tokenizer reads eos_token (and encodes it)."""
    eos = None if encoder.eot_token is None else ENDOFTEXT
    return {"tokenizer_class": "GPT2Tokenizer", "eos_token": eos, "eos_token_id": encoder.eot_token,
            "bos_token": eos, "bos_token_id": encoder.eot_token, "pad_token": None, "vocab_size": encoder.n_vocab,
            "model_max_length": n_ctx, "chat_template": None}


def short(value, n=80):
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


# ---- The response

def token_text(encoder, token_id):
    """How a token is named in log-probs: its text, or, when its bytes are part of a character, OpenAI's
    "bytes:\\xe2\\x80"."""
    data = encoder.token_bytes(token_id)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def finite(logprob):
    """A log-prob as JSON can carry it: -inf is sent as NEG_INF."""
    assert not math.isnan(logprob)
    return NEG_INF if logprob == -math.inf else float(logprob)


class Choice:
    """One choice as it grows: its text, and its legacy log-probs when asked for (tokens, token_logprobs,
    top_logprobs, text_offset, every list one entry a token). `take()` hands over what was added since the last
    take, for a stream's chunk."""

    def __init__(self, index, encoder, with_logprobs):
        self.index, self.encoder, self.with_logprobs = index, encoder, with_logprobs
        self.text, self.finish_reason = "", None
        self.logprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        self._offset, self._utf8 = 0, codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._taken_text, self._taken_tokens = 0, 0

    def add(self, tokens, text):
        """Tokens [(id, log-prob, top [(id, log-prob), ...])] (None, None for the prompt's first, and when not
        asked for) and the text they let out."""
        self.text += text
        if not self.with_logprobs:
            return
        for token_id, logprob, top in tokens:
            self.logprobs["tokens"].append(token_text(self.encoder, token_id))
            self.logprobs["token_logprobs"].append(None if logprob is None else finite(logprob))
            self.logprobs["top_logprobs"].append(
                None if top is None else {token_text(self.encoder, i): finite(value) for i, value in top})
            self.logprobs["text_offset"].append(self._offset)
            self._offset += len(self._utf8.decode(self.encoder.token_bytes(token_id)))

    def whole(self):
        return {"index": self.index, "text": self.text, "logprobs": self.logprobs if self.with_logprobs else None,
                "finish_reason": self.finish_reason}

    def take(self):
        """What was added since the last take, as a chunk's choice."""
        text, tokens = self.text[self._taken_text :], len(self.logprobs["tokens"])
        part = {key: values[self._taken_tokens :] for key, values in self.logprobs.items()}
        self._taken_text, self._taken_tokens = len(self.text), tokens
        return {"index": self.index, "text": text, "logprobs": part if self.with_logprobs else None,
                "finish_reason": self.finish_reason}


def response_id():
    return f"cmpl-{uuid.uuid4().hex}"


def envelope(id_, model_name, choices, usage=None):
    """The object around the choices, for a whole response or a stream's chunk."""
    out = {"id": id_, "object": "text_completion", "created": int(time.time()), "model": model_name, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def usage(prompt_tokens, completion_tokens):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def models(model_name, n_ctx, created):
    return {"object": "list", "data": [model(model_name, n_ctx, created)]}


def model(model_name, n_ctx, created):
    return {"id": model_name, "object": "model", "created": created, "owned_by": "gpt2-numpy", "max_model_len": n_ctx}
