"""The command line: `python gpt2.py "Alan Turing theorized" --n_tokens 40` hands over to main() here.

It parses the options (cli_options.py, which refuses any that the chosen mode would ignore), checks that the
work fits in memory, loads the model (utils.py), and runs one mode: stream one continuation, a batch
(--n_samples, --prompts_file), --interactive (the loop is in interactive.py), --score, a look inside the
prompt (--inspect, --html; lens.py), or --serve (server/). Progress bars go to stderr, and only when stderr is a terminal.
"""
import math
import os
import sys

import numpy as np

import interactive
import lens_html
from cli_options import generation_options, parse_args
from generation import collect
from gpt2 import generate_stream, score
from kvcache import kv_cache_bytes
from textstream import logprob_table, text_pieces


def generation_bytes(n_rows, width, n_tokens, hparams):  # [n_rows, width] prompts + n_tokens -> bytes at the peak
    """About how much memory generating takes beyond the weights: n_rows prompts padded to `width` tokens.

    The peak of this engine, all float32 (4 bytes), with n_positions = min(width + n_tokens, n_ctx):
    - the KV cache [n_layer, 2, n_rows, n_positions, n_embd], twice: when full it is copied into room twice
      its size (kvcache.py), and old and new are both held during the copy;
    - the prompt's activations in one block, [n_rows, width, about 20 * n_embd] (qkv, the MLP's 4 * n_embd
      and GELU's temporaries of that size), and one block of attention scores [n_rows, n_head, <= 128, width];
    - the logits [n_rows, n_vocab], three times: the last step's, this step's, and the chooser's working copy.
    """
    width = min(width, hparams["n_ctx"])
    n_positions = min(width + n_tokens, hparams["n_ctx"])
    kvcache = 2 * kv_cache_bytes(hparams["n_layer"], hparams["n_embd"], n_rows, n_positions) // 4
    prefill = n_rows * width * (20 * hparams["n_embd"] + hparams["n_head"] * min(width, 128))
    logits = 3 * n_rows * hparams["n_vocab"]
    return 4 * (kvcache + prefill + logits)


def memory_available():
    """Bytes the system can give without swapping (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def check_memory(n_rows, width, n_tokens, hparams, fixes):
    """A ValueError saying what to lower (`fixes`) when generating cannot fit in the memory available."""
    rows = f"{n_rows:,} rows of" if n_rows > 1 else "a prompt of"
    check_fits(generation_bytes(n_rows, width, n_tokens, hparams), f"generating {rows} {width:,} tokens plus {n_tokens:,}", fixes)


def check_fits(needed, work, fixes):
    """A ValueError saying what to lower (`fixes`) when `work` needs more bytes than the memory available."""
    available = memory_available()
    if available is not None and needed > available:
        raise ValueError(f"{work} needs about {gib(needed)} of memory, but {gib(available)} is available: "
                         f"{', or '.join(fixes)}")


def gib(n):
    return f"{n / 2**30:,.1f} GiB"


def main(argv=None):
    import utils  # imported here so that `import gpt2` stays light

    args = parse_args(argv, utils.MODEL_SIZES)
    try:
        run(args, utils)
        sys.stdout.flush()  # here, so that a reader that left shows up below, not as Python's exit warning
    except BrokenPipeError:  # the reader of stdout has all it wanted (`| head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exiting flushes nowhere
        sys.exit(0)
    except (ValueError, OSError) as e:
        sys.exit(f"gpt2.py: error: {e}")
    except KeyboardInterrupt as e:
        sys.exit(f"\ngpt2.py: {str(e) or 'interrupted'}")


def run(args, utils):
    if args.html is not None:  # before any work: a path that cannot take the page fails at once
        lens_html.check_writable(args.html)
    if args.verify and args.model not in utils.MODEL_SIZES:  # a folder or hub id: refused before it is loaded (or fetched)
        utils.tf_model_dir(args.model, args.models_dir)
    encoder, hparams, params = utils.load_model(args.model, args.models_dir)
    if args.serve:
        from server.serve import API_KEY_ENV, serve

        api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
        limits = {name: getattr(args, name) for name in ("max_batch", "max_queue", "prefix_cache_mb")
                  if getattr(args, name) is not None}
        return serve(encoder, hparams, params, args.model, args.host, args.port, api_key, args.cors_origin, **limits)
    if args.verify:  # the shapes were checked as the model loaded; this reads every byte
        model_dir = utils.tf_model_dir(args.model, args.models_dir)
        checked = utils.verify_checkpoint(utils.checkpoint_prefix(model_dir), quiet=not sys.stderr.isatty())
        print(f"{model_dir}: {checked:,} bytes of tensors match their crc32c", file=sys.stderr)
        if args.prompt is None and args.prompts_file is None and not args.interactive:
            return
    n_head = hparams["n_head"]
    encode = lambda text: encoder.encode(text, allowed_special="all" if args.allow_special else ())
    options = generation_options(args, encoder)
    beams = ["lower --num_beams"] * (options["num_beams"] > 1)

    def continue_one(prompt):
        ids = encode(prompt)
        check_memory(options["num_beams"], len(ids), args.n_tokens, hparams, [*beams, "lower --n_tokens", "shorten the prompt"])
        print_stream(ids, params, n_head, encoder, args.stop, options)

    if args.inspect or args.html is not None:
        inspect_prompt(encode(args.prompt), params, n_head, encoder, args)
    elif args.interactive:
        interactive.run(continue_one, "gpt2.py")
    elif args.score:
        for prompt in [args.prompt] if args.prompt is not None else read_prompts(args.prompts_file):
            print_score(encode(prompt), params, n_head, encoder, args.stride, args.per_token)
    elif args.prompts_file or args.n_samples > 1:
        prompts = read_prompts(args.prompts_file) if args.prompts_file else [args.prompt]
        fixes = ["lower --n_samples"] * (args.n_samples > 1) + beams + ["give fewer prompts"] * (len(prompts) > 1)
        batch = [encode(p) for p in prompts]
        check_memory(len(prompts) * max(args.n_samples, options["num_beams"]), max(map(len, batch)), args.n_tokens, hparams,
                     [*fixes, "shorten the prompts" if len(prompts) > 1 else "shorten the prompt", "lower --n_tokens"])
        rows = generate_rows(batch, params, n_head, dict(options, num_return_sequences=args.n_samples))
        prompts = [p for p in prompts for _ in range(args.n_samples)]
        for i, (prompt, row) in enumerate(zip(prompts, rows), start=1):
            print(f"=== {i}/{len(rows)}: {prompt}")
            print_text(row, encoder, args.stop, options)
    else:
        continue_one(args.prompt)


def inspect_prompt(ids, params, n_head, encoder, args):
    """--inspect prints the token view; --html writes the page. Both come from one forward pass (lens.py)."""
    import lens

    deep = args.html is not None  # the table needs only the token view; the page also the lens and the patterns
    n_seq = len(ids) + args.prepend_eot
    check_fits(lens.inspection_bytes(n_seq, params, n_head, deep), f"looking inside {n_seq:,} tokens",
               ["shorten the text"] + ["drop --html"] * deep)
    seen = lens.Inspection(ids, params, n_head, encoder, prepend_eot=args.prepend_eot, deep=deep)
    if args.inspect:
        print(seen.table())
    if args.html is not None:
        lens_html.write(args.html, seen.html())
        print(f"wrote {args.html}: open it in a browser", file=sys.stderr)


def generate_rows(batch, params, n_head, options):
    """gpt2.generate for a batch -> rows of ids, or with logprobs of (id, Logprob) pairs, with a bar on stderr
    counting the steps when stderr is a terminal."""
    from tqdm import tqdm

    steps = generate_stream(batch, params, n_head, **options)
    bar = tqdm(steps, total=options["n_tokens"], desc="generating", unit="step", leave=False, disable=None)
    if options["logprobs"] is None:
        return collect(bar, len(batch) * options["num_return_sequences"], False)
    rows, logprobs = collect(bar, len(batch) * options["num_return_sequences"], True)
    return [list(zip(row, row_logprobs)) for row, row_logprobs in zip(rows, logprobs)]


def print_score(ids, params, n_head, encoder, stride, per_token):
    from tqdm import tqdm

    with tqdm(total=max(len(ids) - 1, 0), desc="scoring", unit="token", leave=False, disable=None) as bar:
        logprobs = score(ids, params, n_head, stride, progress=lambda done, total: bar.update(done - bar.n))
    if per_token:
        print(f"{'position':>8}  {'id':>6}  {'log-prob':>9}  token")
        for position, (token_id, logprob) in enumerate(zip(ids[1:], logprobs), start=1):
            print(f"{position:>8}  {token_id:>6}  {logprob:>9.4f}  {encoder.decode([token_id])!r}")
    total = float(np.sum(logprobs))
    print(f"tokens scored: {len(logprobs)}  total log-prob: {total:.4f} nats  perplexity: {math.exp(-total / len(logprobs)):.4f}")


def print_stream(ids, params, n_head, encoder, stop, options):
    """Print the continuation of ids as it is produced, then a newline; with --logprobs, then their table."""
    print_text(generate_stream(ids, params, n_head, **options), encoder, stop, options)


def print_text(tokens, encoder, stop, options):
    """Print the text of these ids as they come, then a newline; with --logprobs (the ids come as (id, Logprob)
    pairs), then the table of those the text shows."""
    logprobs = []
    if options["logprobs"] is not None:
        tokens = recorded(tokens, logprobs)
    for piece in text_pieces(tokens, encoder, stop, options["stop_at_eot"]):
        print(piece, end="", flush=True)
    print()
    if logprobs:
        print(logprob_table(*zip(*logprobs), encoder))


def recorded(pairs, records):
    """The ids of (id, Logprob) pairs as they come, each pair appended to records when its id is taken."""
    for pair in pairs:
        records.append(pair)
        yield pair[0]


def read_prompts(path):
    """The non-empty lines of a text file, or a ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read prompts from {path}: {e}") from None
    if not prompts:
        raise ValueError(f"{path} has no prompts: write one per line")
    return prompts


if __name__ == "__main__":
    main()
