"""The command line: `python gpt2.py "Alan Turing theorized" --n_tokens 40` hands over to main() here.

It parses the options, loads the model (utils.py), and runs one mode: stream one continuation, a batch
(--n_samples, --prompts_file), --interactive, or --score.
"""
import argparse
import math
import sys

import numpy as np

from gpt2 import generate, score
from textstream import decode_text, stream_text


def positive_int(text):
    """argparse type: a whole number >= 1, or a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def parse_args(argv, model_sizes):
    parser = argparse.ArgumentParser(
        description="Continue (or score) text with OpenAI's GPT-2, in pure NumPy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("prompt", nargs="?", help="the text to continue (or score); see also --prompts_file, --interactive")
    parser.add_argument("--n_tokens", type=positive_int, default=40, help="how many tokens to generate")
    parser.add_argument("--model_size", default=argparse.SUPPRESS, choices=model_sizes, help="which of OpenAI's GPT-2s (default: 124M)")
    parser.add_argument("--models_dir", default="models", help="where checkpoints live (downloaded if missing)")
    parser.add_argument("--model", metavar="PATH_OR_ID", help="instead of --model_size: a model folder (HuggingFace's or OpenAI's layout) or a HuggingFace hub id such as distilgpt2 or org/name@revision (found in, or fetched into, the HuggingFace cache)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 is greedy; higher is more random")
    sampling.add_argument("--top_k", type=positive_int, default=None, help="draw only from the k most likely tokens")
    sampling.add_argument("--top_p", type=float, default=None, help="draw only from the most likely tokens holding this much probability")
    sampling.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")
    stopping = parser.add_argument_group("stopping and long prompts")
    stopping.add_argument("--stop", action="append", default=[], help="end the text before this string (repeatable)")
    stopping.add_argument("--ignore_eot", action="store_true", help="go on past <|endoftext|>")
    stopping.add_argument("--allow_special", action="store_true", help="read <|endoftext|> in the prompt as the special token, not as text")
    stopping.add_argument("--slide", action="store_true", help="beyond n_ctx, slide the window to the most recent tokens instead of stopping with an error")
    modes = parser.add_argument_group("modes")
    modes.add_argument("--n_samples", type=positive_int, default=1, help="continue the prompt (each prompt of --prompts_file) this many times, in one batch")
    modes.add_argument("--prompts_file", help="continue every non-empty line of this file, in one batch")
    modes.add_argument("--interactive", action="store_true", help="load once, then continue each line read from stdin until EOF")
    modes.add_argument("--score", action="store_true", help="print the prompt's total log-probability and perplexity instead")
    modes.add_argument("--per_token", action="store_true", help="with --score, also print a table of every token's log-probability")
    modes.add_argument("--stride", type=positive_int, default=None, help="with --score, the sliding window's step for texts beyond n_ctx; None means n_ctx // 2")
    modes.add_argument("--verify", action="store_true", help="first check every tensor against its crc32c; alone, only that")
    args = parser.parse_args(argv)
    if args.model is not None and hasattr(args, "model_size"):
        parser.error("give --model or --model_size, not both")
    args.model = args.model or getattr(args, "model_size", "124M")
    if args.prompt is not None and args.prompts_file is not None:
        parser.error("give a prompt or --prompts_file, not both")
    if args.prompt is None and args.prompts_file is None and not args.interactive and not args.verify:
        parser.error("give a prompt, or --prompts_file, or --interactive (or --verify alone)")
    return args


def print_score(ids, params, n_head, encoder, stride, per_token):
    logprobs = score(ids, params, n_head, stride)
    if per_token:
        print(f"{'position':>8}  {'id':>6}  {'log-prob':>9}  token")
        for position, (token_id, logprob) in enumerate(zip(ids[1:], logprobs), start=1):
            print(f"{position:>8}  {token_id:>6}  {logprob:>9.4f}  {encoder.decode([token_id])!r}")
    total = float(np.sum(logprobs))
    print(f"tokens scored: {len(logprobs)}  total log-prob: {total:.4f} nats  perplexity: {math.exp(-total / len(logprobs)):.4f}")


def main(argv=None):
    import utils  # imported here so that `import gpt2` stays light

    args = parse_args(argv, utils.MODEL_SIZES)
    options = dict(n_tokens=args.n_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   rng=args.seed, stop_at_eot=not args.ignore_eot, slide=args.slide)
    try:
        encoder, hparams, params = utils.load_model(args.model, args.models_dir)
        if args.verify:  # the shapes were checked as the model loaded; this reads every byte
            model_dir = utils.tf_model_dir(args.model, args.models_dir)
            checked = utils.verify_checkpoint(utils.checkpoint_prefix(model_dir))
            print(f"{model_dir}: {checked:,} bytes of tensors match their crc32c", file=sys.stderr)
            if args.prompt is None and args.prompts_file is None and not args.interactive:
                return
        n_head = hparams["n_head"]
        encode = lambda text: encoder.encode(text, allowed_special="all" if args.allow_special else ())
        if args.interactive:
            interactive(encode, params, n_head, encoder, args.stop, options)
        elif args.score:
            prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts_file)
            for prompt in prompts:
                print_score(encode(prompt), params, n_head, encoder, args.stride, args.per_token)
        elif args.prompts_file or args.n_samples > 1:
            prompts = read_prompts(args.prompts_file) if args.prompts_file else [args.prompt]
            prompts = [p for p in prompts for _ in range(args.n_samples)]
            rows = generate([encode(p) for p in prompts], params, n_head, **options)
            for i, (prompt, row) in enumerate(zip(prompts, rows), start=1):
                print(f"=== {i}/{len(rows)}: {prompt}")
                print(decode_text(row, encoder, args.stop, options["stop_at_eot"]))
        else:
            print_stream(encode(args.prompt), params, n_head, encoder, args.stop, options)
    except (ValueError, OSError) as e:
        sys.exit(f"gpt2.py: error: {e}")
    except KeyboardInterrupt as e:
        sys.exit(f"\ngpt2.py: {str(e) or 'interrupted'}")


def print_stream(ids, params, n_head, encoder, stop, options):
    """Print the continuation of ids as it is produced, then a newline."""
    for piece in stream_text(ids, params, n_head, encoder, stop=stop, **options):
        print(piece, end="", flush=True)
    print()


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


def interactive(encode, params, n_head, encoder, stop, options):
    """Continue each line read from stdin until EOF; a bad prompt gets its error and the loop goes on."""
    show_prompt = sys.stdin.isatty()
    while True:
        if show_prompt:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if not line.strip():
            continue
        try:
            print_stream(encode(line.rstrip("\n")), params, n_head, encoder, stop, options)
        except ValueError as e:
            print(f"gpt2.py: error: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
