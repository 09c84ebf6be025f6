"""Speed of beam search and of several samples of one prompt, beside greedy decoding and HuggingFace transformers.

    python -m benchmarks.generation [--threads N] [--repeats 3] [--tiny]

It runs on the random-weight 124M of benchmarks/common.py (models/bench/124M, written once). Each engine runs
in a process of its own with the same thread count (OpenBLAS's for NumPy, torch's intra-op threads), on the
same weights and prompts; each figure is the best of --repeats runs. The workloads:
- greedy: gpt2.generate, a 10-token prompt + 40 tokens: the baseline of the beam-search target;
- beams: the same with num_beams=4; HF: GPT2LMHeadModel.generate(num_beams=4). Both with min_new_tokens=40,
  so that both take all 40 steps whatever the random weights make of <|endoftext|>; both must give the same ids;
- samples: 8 samples of one 500-token prompt, 40 tokens each, at temperature 1 (min_new_tokens=40): ours with
  num_return_sequences=8, which reads the prompt once; HF's generate(do_sample=True, num_return_sequences=8);
  and ours given the prompt 8 times in one batch, which reads it 8 times: what the one prefill saves.
Targets (issue 14): beams in at most 2.5x our greedy time, and in at most half HF's beam search time.
"""
import argparse
import json
import sys

import numpy as np

import utils
from benchmarks.common import (TINY, add_run_options, best_of, check_run_options, ensure_checkpoint, markdown_table,
                               run, verdict)

N_NEW, BEAMS, SAMPLES, LONG_PROMPT = 40, 4, 8, 500
TARGETS = {"beams_vs_greedy": 2.5, "beams_vs_hf": 2.0}


def prompts():
    """The same prompts in every process: one of 10 tokens, one of 500, no <|endoftext|> in either."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 50256, 10).tolist(), rng.integers(0, 50256, LONG_PROMPT).tolist()


def ours_calls(params, n_head):
    import gpt2

    short, long = prompts()
    run = lambda prompt, **options: gpt2.generate(prompt, params, n_head, n_tokens=N_NEW, min_new_tokens=N_NEW, **options)
    return {
        "greedy": lambda: run(short),
        "beams": lambda: run(short, num_beams=BEAMS),
        "samples": lambda: run(long, temperature=1.0, rng=0, num_return_sequences=SAMPLES),
        "samples_8_prefills": lambda: run([long] * SAMPLES, temperature=1.0, rng=0),
    }


def hf_calls(hparams, params, threads):
    import torch
    import transformers
    from tests.conftest import hf_model

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    model = hf_model(hparams, params)
    short, long = prompts()

    def run(prompt, **options):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=True, max_new_tokens=N_NEW,
                                 min_new_tokens=N_NEW, **options)
        return out[:, ids.shape[1]:].tolist()

    return {
        "beams": lambda: run(short, do_sample=False, num_beams=BEAMS)[0],
        "samples": lambda: run(long, do_sample=True, num_return_sequences=SAMPLES),
    }


def worker(engine, model_dir, repeats, threads):
    """One engine's workloads, timed: a JSON line {workload: {"seconds": .., "ids": ..}} on stdout."""
    import warnings

    warnings.filterwarnings("ignore")  # torch.from_numpy on read-only memory maps, transformers' notices
    hparams, params = utils.load_hparams_and_params(model_dir)
    calls = ours_calls(params, hparams["n_head"]) if engine == "ours" else hf_calls(hparams, params, threads)
    results = {}
    for name, call in calls.items():
        seconds, ids = best_of(call, repeats)
        results[name] = {"seconds": seconds, "ids": ids}
    print(json.dumps(results))


def run_worker(engine, model_dir, args):
    command = [sys.executable, "-m", "benchmarks.generation", "--worker", engine, "--model_dir", str(model_dir),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
    return json.loads(run(command, args.threads)[1])


def rows(ours, hf):
    """The table's rows: workload, ours (s), HF (s), ratio, target, met."""
    seconds = lambda report, name: report[name]["seconds"]
    greedy, beams, hf_beams = seconds(ours, "greedy"), seconds(ours, "beams"), seconds(hf, "beams")
    samples, hf_samples, prefills = seconds(ours, "samples"), seconds(hf, "samples"), seconds(ours, "samples_8_prefills")
    return [
        [f"greedy, 10-token prompt + {N_NEW}", f"{greedy:.3f}", "—", "—", "baseline", verdict(None)],
        [f"beam search, num_beams {BEAMS}, 10-token prompt + {N_NEW}", f"{beams:.3f}", f"{hf_beams:.3f}",
         f"{beams / greedy:.2f}x greedy", f"<= {TARGETS['beams_vs_greedy']}x greedy",
         verdict(beams / greedy <= TARGETS["beams_vs_greedy"])],
        ["", "", "", f"{hf_beams / beams:.2f}x faster than HF", f">= {TARGETS['beams_vs_hf']}x faster",
         verdict(hf_beams / beams >= TARGETS["beams_vs_hf"])],
        [f"{SAMPLES} samples of a {LONG_PROMPT}-token prompt + {N_NEW} each", f"{samples:.3f}", f"{hf_samples:.3f}",
         f"{hf_samples / samples:.2f}x faster than HF", "report", verdict(None)],
        [f"the same, the prompt given {SAMPLES} times in a batch (read {SAMPLES} times)", f"{prefills:.3f}", "—",
         f"{prefills / samples:.2f}x the one-prefill time", "report", verdict(None)],
    ]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    return check_run_options(parser, parser.parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model_dir, args.repeats, args.threads)
    model_dir = ensure_checkpoint("124M", args.models_dir, TINY if args.tiny else None)
    ours, hf = run_worker("ours", model_dir, args), run_worker("hf", model_dir, args)
    print(f"{'TINY MODEL, not GPT-2 124M; ' if args.tiny else ''}{args.threads} threads each, best of {args.repeats} runs; "
          f"seconds for the whole call")
    print(markdown_table(["workload", "ours (s)", "HF (s)", "ratio", "target", "met"], rows(ours, hf)))
    same = ours["beams"]["ids"] == hf["beams"]["ids"]
    print(f"\nbeam search: {'the same ids from ours and HF' if same else 'ours and HF chose different ids'}")


if __name__ == "__main__":
    main()
