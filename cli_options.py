"""The command line's options: argparse, the types of its values, and the rules that make every option that would
do nothing in the chosen mode an error naming it (cli.py runs the modes).
"""
import argparse
import math
import re

from encoder import MODEL_SIZES

N_TOKENS = 40
# Options that only mean something when generating, and when scoring: given in another mode, they are an error.
CONTROLS = ("repetition_penalty", "no_repeat_ngram_size", "bad_words", "min_new_tokens")
BEAMS = ("num_beams", "length_penalty", "early_stopping")
GENERATING = ("n_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eot", "slide", *CONTROLS, *BEAMS,
              "logprobs")
SCORING = ("per_token", "stride")
SERVING = ("host", "port", "api_key", "cors_origin", "max_batch", "max_queue", "prefix_cache_mb")  # only with --serve
SAMPLING = ("top_k", "top_p", "seed")  # each asks for a draw, so they turn sampling on (as does --n_samples above 1)
EARLY_STOPPING = {"true": True, "false": False, "never": "never"}
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def positive_int(text):
    """argparse type: a whole number >= 1, or a one-line usage error."""
    return whole_number(text, 1)


def whole_number(text, least=0):
    """argparse type: a whole number >= least (0 unless told), or a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least {least}, got {text!r}")
    return value


def number(accept, what):
    """argparse type: a number that `accept`s, or a one-line usage error saying it must be `what`."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


def word(text):
    """argparse type for --bad_words: some text."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty bad word bans nothing: give some text")
    return text


def stop_string(text):
    r"""argparse type for --stop: the text with \n, \t, \r and \\ read as a newline, tab, return and backslash.

    A shell passes "\n" on as a backslash and an n, so --stop "\n" means a newline, as in grep and printf.
    """
    def unescape(match):
        if match[1] not in ESCAPES:
            raise argparse.ArgumentTypeError(
                f"{text!r} holds the unknown escape \\{match[1]}: the escapes are \\n \\t \\r, and \\\\ for a backslash")
        return ESCAPES[match[1]]

    if not text:
        raise argparse.ArgumentTypeError("an empty stop string matches nowhere: give some text")
    return re.sub(r"\\(.?)", unescape, text, flags=re.S)


def parse_args(argv, model_sizes):
    parser = argparse.ArgumentParser(usage="%(prog)s [prompt] [options]  (--help lists them)",
                                     description="Continue (or score) text with OpenAI's GPT-2, in pure NumPy.")
    parser.add_argument("prompt", nargs="?", help="the text to continue (or score), taken literally; see also --prompts_file, --interactive")
    parser.add_argument("--n_tokens", type=positive_int, help=f"how many tokens to generate (default: {N_TOKENS})")
    parser.add_argument("--model_size", choices=model_sizes, help="which of OpenAI's GPT-2s (default: 124M)")
    parser.add_argument("--models_dir", help="where OpenAI's checkpoints live, one folder per size, downloaded if missing (default: models)")
    parser.add_argument("--model", metavar="PATH_OR_ID", help="instead of --model_size: a model folder (HuggingFace's or OpenAI's layout) or a HuggingFace hub id such as distilgpt2 or org/name@revision (found in, or fetched into, the HuggingFace cache)")
    sampling = parser.add_argument_group("sampling", "Greedy unless asked: --top_k, --top_p, --seed or --n_samples above 1 "
                                         "without --temperature sample at temperature 1, as OpenAI's sampler does. "
                                         "With --num_beams above 1 none of them apply: beam search is a search, not a draw.")
    sampling.add_argument("--temperature", type=float, help="0 is greedy; higher is more random (default: 0, or 1 as above)")
    sampling.add_argument("--top_k", type=positive_int, help="draw only from the k most likely tokens (default: all)")
    sampling.add_argument("--top_p", type=float, help="draw only from the most likely tokens holding this much probability (default: 1)")
    sampling.add_argument("--seed", type=whole_number, help="the same seed gives the same text (default: a fresh draw each run)")
    controls = parser.add_argument_group(
        "controls", "HuggingFace's generation controls, with its names and meaning: in greedy, sampled and beam decoding "
        "alike, before temperature, top-k and top-p. Each sees the prompt and the text generated so far.")
    controls.add_argument("--repetition_penalty", type=number(lambda x: 0 < x < math.inf, "a number above 0"),
                          help="make every token already in the prompt or the text less likely: a logit above 0 divided "
                          "by this, one below 0 multiplied (1.2 is usual; default: 1, none)")
    controls.add_argument("--no_repeat_ngram_size", type=positive_int, help="never repeat a run of this many tokens (default: off)")
    controls.add_argument("--bad_words", action="append", type=word, default=[], help="never write this word, with or "
                          "without a space before it (repeatable)")
    controls.add_argument("--min_new_tokens", type=positive_int, help="no <|endoftext|> before this many tokens (default: 0)")
    beams = parser.add_argument_group(
        "beam search", "Keep the --num_beams most likely texts at each step and print the most likely at the end "
        "(--n_samples N: the N most likely, N at most --num_beams). The text appears once the search is done. "
        "It goes with the controls, not with sampling or --slide.")
    beams.add_argument("--num_beams", type=positive_int, help="how many texts to keep at each step (default: 1, no search)")
    beams.add_argument("--length_penalty", type=number(math.isfinite, "a number"), help="a finished text scores its "
                       "log-prob / length ** this: above 0 favours longer texts, below 0 shorter (default: 1)")
    beams.add_argument("--early_stopping", choices=EARLY_STOPPING, help="true: stop once --num_beams texts are finished; "
                       "false: also once no running text can still beat them, by HuggingFace's estimate; never: "
                       "only when none can, for certain (default: false)")
    stopping = parser.add_argument_group("stopping and long prompts")
    stopping.add_argument("--stop", action="append", type=stop_string, default=[],
                          help=r"end the text before this string (repeatable); \n \t \r and \\ are a newline, tab, return and backslash")
    stopping.add_argument("--ignore_eot", action="store_true", help="go on past <|endoftext|>")
    stopping.add_argument("--allow_special", action="store_true", help="read <|endoftext|> in the prompt as the special token, not as text")
    stopping.add_argument("--slide", action="store_true", help="beyond n_ctx, slide the window to the most recent tokens instead of stopping with an error")
    modes = parser.add_argument_group("modes")
    modes.add_argument("--n_samples", type=positive_int, help="continue the prompt (each prompt of --prompts_file) this many times, "
                       "in one batch, the prompt read once; with --num_beams, the N most likely texts (default: 1)")
    modes.add_argument("--prompts_file", help="continue (or score) every non-empty line of this file; continuations in one batch")
    modes.add_argument("--interactive", action="store_true", help="load once, then continue each line read from stdin until EOF")
    modes.add_argument("--score", action="store_true", help="print the prompt's total log-probability and perplexity instead")
    modes.add_argument("--per_token", action="store_true", help="with --score, also print a table of every token's log-probability")
    modes.add_argument("--stride", type=positive_int, help="with --score, the sliding window's step for texts beyond n_ctx (default: n_ctx // 2)")
    modes.add_argument("--logprobs", type=whole_number, metavar="N", help="after each text, a table of every generated "
                       "token's log-probability under the model, as chosen, and the model's N most likely tokens")
    modes.add_argument("--verify", action="store_true", help="first check every tensor against its crc32c; alone, only that")
    serving = parser.add_argument_group("serving (server/)", "Serve the model over HTTP with OpenAI's completions API: "
                                        "each request brings its own prompt and options.")
    serving.add_argument("--serve", action="store_true", help="load the model once, then answer HTTP requests until Ctrl-C")
    serving.add_argument("--host", help="the address to listen on (default: 127.0.0.1, this machine only)")
    serving.add_argument("--port", type=whole_number, help="the port to listen on, 0 for any free one (default: 8000)")
    serving.add_argument("--api_key", help="ask every request for `Authorization: Bearer KEY` (default: $GPT2_API_KEY, "
                         "else none)")
    serving.add_argument("--cors_origin", action="append", default=[], metavar="ORIGIN", help="let pages from this "
                         "origin (such as http://localhost:3000, or *) call the API from a browser (repeatable; default: none)")
    serving.add_argument("--max_batch", type=positive_int, help="choices generated together in one batch; requests beyond "
                         "wait their turn (default: 16)")
    serving.add_argument("--max_queue", type=positive_int, help="requests waiting to start; more are answered 503 with "
                         "Retry-After (default: 64)")
    serving.add_argument("--prefix_cache_mb", type=whole_number, help="memory for the keys and values of recent prompts, "
                         "so that a prompt that begins with one reads only the rest; 0 turns it off (default: 1024)")
    looking = parser.add_argument_group("looking inside (lens.py)", "These read the prompt, at most n_ctx tokens, and generate nothing.")
    looking.add_argument("--inspect", action="store_true", help="print each token's probability, rank, the entropy and the likeliest tokens at its place")
    looking.add_argument("--html", metavar="FILE", help="write a page (one file, no network): tokens coloured by rank, attention heatmaps, the logit lens")
    looking.add_argument("--prepend_eot", action="store_true", help="with --inspect or --html, read the prompt after <|endoftext|>, so its first token is scored too")
    args = parser.parse_args(argv)
    problem = serve_conflict(args) or inspect_conflict(args) or conflict(args)
    if problem:
        parser.error(problem)
    beam_search = (args.num_beams or 1) > 1
    sampled = given(args, SAMPLING) + ["--n_samples"] * ((args.n_samples or 1) > 1 and not beam_search)
    if args.temperature == 0 and sampled:
        parser.error(f"--temperature 0 is greedy, so {' and '.join(sampled)} would do nothing: drop one or the other")
    if args.temperature is None:
        args.temperature = 1.0 if sampled else 0.0
    args.n_tokens, args.n_samples = args.n_tokens or N_TOKENS, args.n_samples or 1
    args.model = args.model or args.model_size or "124M"
    args.models_dir = args.models_dir or "models"
    args.host, args.port = args.host or "127.0.0.1", 8000 if args.port is None else args.port
    return args


def serve_conflict(args):
    """What is wrong with --serve (or its options) in this command, or None."""
    if not args.serve:
        unused = given(args, SERVING)
        return unused and f"{' and '.join(unused)} only {'applies' if len(unused) == 1 else 'apply'} with --serve: give --serve, or drop {'it' if len(unused) == 1 else 'them'}"
    if args.port is not None and args.port > 65535:
        return f"--port must be from 0 to 65535, got {args.port}"
    if args.prompt is not None:
        return "--serve takes its prompts from HTTP requests: drop the prompt (or --serve)"
    unused = given(args, (*GENERATING, *SCORING, "n_samples", "prompts_file", "interactive", "score", "verify",
                          "allow_special", "inspect", "html", "prepend_eot"))
    if unused:
        return f"{' and '.join(unused)} {'does' if len(unused) == 1 else 'do'} nothing with --serve, where each request brings its own options: drop {'it' if len(unused) == 1 else 'them'}"
    return None


def given(args, names):
    """The options among `names` that the command line set, as "--name" (every default here is None, False or [])."""
    # Not `in (None, False, [])`: 0 == False, and --seed 0 or --temperature 0 is given.
    return [f"--{name}" for name in names if not (getattr(args, name) is None or getattr(args, name) is False or getattr(args, name) == [])]


def conflict(args):
    """What is wrong with this combination of modes and options, or None: no option may go silently unused."""
    texts = args.prompt is not None or args.prompts_file is not None
    if args.model is not None and args.model_size is not None:
        return "give --model or --model_size, not both"
    if args.model is not None and args.model not in MODEL_SIZES and args.models_dir is not None:
        return f"--models_dir holds OpenAI's sizes; --model {args.model} is a folder or hub id of its own: drop --models_dir"
    if args.serve:  # serve_conflict checked the rest
        return None
    if args.prompt is not None and args.prompts_file is not None:
        return "give a prompt or --prompts_file, not both"
    if args.interactive and texts:
        clash = "the prompt" if args.prompt is not None else "--prompts_file"
        return f"--interactive reads its prompts from stdin: drop {clash} (or --interactive)"
    if args.interactive and args.score:
        return "--interactive continues each line of stdin and scores nothing: drop --score (or --interactive)"
    if not texts and not args.interactive:
        if not args.verify:
            return "give a prompt, or --prompts_file, or --interactive (or --verify alone)"
        unused = given(args, (*GENERATING, *SCORING, "n_samples", "allow_special"))
        where = "with --verify alone (no prompt, --prompts_file or --interactive)"
    elif args.score:
        unused, where = given(args, (*GENERATING, "n_samples")), "with --score, which generates nothing"
    else:
        unused = given(args, (*SCORING, "n_samples") if args.interactive else SCORING)
        where = "with --interactive, which makes one continuation per line" if args.interactive else "without --score"
    if unused:
        return f"{' and '.join(unused)} {'does' if len(unused) == 1 else 'do'} nothing {where}: drop {'it' if len(unused) == 1 else 'them'}"
    return search_conflict(args)


def search_conflict(args):
    """What is wrong with this combination of beam search, sampling and --logprobs, or None."""
    if args.interactive and args.logprobs is not None:
        return "--logprobs prints a table after each text, and --interactive one line per prompt: drop one of them"
    if (args.num_beams or 1) == 1:
        unused = given(args, ("length_penalty", "early_stopping"))
        if unused:
            return f"{' and '.join(unused)} only {'applies' if len(unused) == 1 else 'apply'} to beam search: " \
                   f"give --num_beams above 1, or drop {'it' if len(unused) == 1 else 'them'}"
        return None
    draws = given(args, SAMPLING) + ["--temperature"] * bool(args.temperature)
    if draws:
        return f"--num_beams {args.num_beams} is a search, not a draw: drop {' and '.join(draws)} (or --num_beams)"
    if args.slide:
        return "--slide and --num_beams do not go together: beam search cannot slide its window; drop one of them"
    if (args.n_samples or 1) > args.num_beams:
        return (f"--n_samples {args.n_samples} is more than --num_beams {args.num_beams}: beam search keeps only "
                f"{args.num_beams} texts; raise --num_beams or lower --n_samples")
    return None


def inspect_conflict(args):
    """What is wrong with --inspect, --html or --prepend_eot in this command, or None."""
    inspecting = given(args, ("inspect", "html"))
    if not inspecting:
        return "--prepend_eot does nothing without --inspect or --html: drop it" if args.prepend_eot else None
    what = " and ".join(inspecting)
    others = given(args, ("prompts_file", "interactive"))
    if others or args.prompt is None:
        return f"{what} {'look' if len(inspecting) > 1 else 'looks'} at one text, the prompt: " + (f"drop {others[0]}" if others else "give it")
    unused = given(args, (*GENERATING, *SCORING, "score", "n_samples"))
    if unused:
        return f"{' and '.join(unused)} {'does' if len(unused) == 1 else 'do'} nothing with {what}, which generates nothing: drop {'it' if len(unused) == 1 else 'them'}"
    return None


def generation_options(args, encoder):
    """generate_stream's options from the command line's."""
    bad_words = {tuple(encoder.encode(text)) for word in args.bad_words for text in (word.lstrip(" "), " " + word.lstrip(" "))}
    return dict(n_tokens=args.n_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, rng=args.seed,
                stop_at_eot=not args.ignore_eot, slide=args.slide, repetition_penalty=args.repetition_penalty or 1.0,
                no_repeat_ngram_size=args.no_repeat_ngram_size or 0, bad_words_ids=[list(w) for w in sorted(bad_words)],
                min_new_tokens=args.min_new_tokens or 0, num_beams=args.num_beams or 1,
                length_penalty=1.0 if args.length_penalty is None else args.length_penalty,
                early_stopping=EARLY_STOPPING[args.early_stopping or "false"], logprobs=args.logprobs,
                eos_token_id=encoder.eot_token)
