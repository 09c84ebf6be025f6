"""Speed and memory of this engine beside HuggingFace transformers, a textbook NumPy pass and the machine's bounds.

    python -m benchmarks.engine [--sizes 124M,355M,1558M] [--threads N] [--repeats 3]
    python -m benchmarks.engine --profile    # where our engine spends its time, workload by workload

The first run writes random-weight checkpoints in OpenAI's layout to models/bench/<size>/ (once, then
cached; see benchmarks/common.py), so the real CLI runs on them unchanged. Every engine runs in a process of
its own (benchmarks/workers.py), one after another, on the same weights and ids, with the same thread count
(OpenBLAS's for NumPy, torch's intra-op threads for PyTorch). Workloads, on 124M:
1. decode: batch 1, a 10-token prompt, 40 new tokens; tokens/s of the whole call, prefill included;
2. time to first token of a 1000-token prompt;
3. decode at 900 tokens of context: tokens/s from the first generated token to the 21st (prefill excluded),
   and the same at 10 tokens of context, for our own ratio;
4. score() of a 4,000-token text with stride 512 against HF's sliding-window perplexity recipe (the loss of
   each window); tokens/s = tokens scored / seconds;
5. a batch of 8 different 10-token prompts, 40 new tokens each;
6. cold start: `python gpt2.py PROMPT --n_tokens 1`, process start to exit, the data file in the page cache;
7. peak RSS of that CLI generating 40 tokens, beside the data file (and 1558M's, with --sizes ...,1558M).
The bounds, measured in the same run on the model's own matrices (workers.bounds): decoding against
the time one token's matrix-vector products take alone (the gemv bound), the first token against the
prefill's FLOPs at the sgemm rate of the model's shapes (the sgemm bound). Targets are ratios measured in one
run: absolute figures move with the machine and its load, and OpenBLAS slows badly when another process
competes for a core, so run it on a quiet machine.
"""
import argparse
import json
import os
import platform
import subprocess
import sys

import utils
from benchmarks.common import (ROOT, SHAPES, TINY, add_run_options, check_run_options, data_bytes, ensure_checkpoint,
                               markdown_table, run, verdict)
from benchmarks.workers import BATCH, N_NEW, N_STEPS, PARTS, SCORE_TOKENS
from kvcache import kv_cache_bytes

CLI_PROMPT = "Alan Turing theorized that computers would one day become"
WORKLOADS = ("decode", "ttft", "decode_short", "decode_deep", "score", "batch")
TARGETS = dict(decode=2.0, ttft=0.9, decode_deep=2.0, deep_vs_short=0.8, score=1.2, batch=2.0, cold_start=0.5,
               rss=1.2, gemv=0.75, sgemm=0.70)


def run_worker(engine, model_dir, workloads, args):
    """One engine's workloads in a fresh process: its JSON report."""
    command = [sys.executable, "-m", "benchmarks.workers", engine, str(model_dir), ",".join(workloads),
               str(args.repeats), str(args.threads)]
    return json.loads(run(command, args.threads)[1])


# A child's ru_maxrss counts the memory of the process that started it (Linux keeps the peak of the image
# that exec replaces), so the CLI's peak RSS is taken by a small Python process that starts it in turn.
PEAK_RSS = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(os.wait4(p.pid, 0)[2].ru_maxrss)")


def cli_command(model_dir, n_tokens):
    return [sys.executable, str(ROOT / "gpt2.py"), CLI_PROMPT, "--n_tokens", str(n_tokens), "--ignore_eot",
            "--models_dir", str(model_dir.parent), "--model_size", model_dir.name]


def peak_rss(model_dir, n_tokens, threads):
    """Peak RSS in bytes of the CLI generating n_tokens on model_dir."""
    _, out = run([sys.executable, "-c", PEAK_RSS, *cli_command(model_dir, n_tokens)], threads)
    return int(out) * 1024  # ru_maxrss is in KiB on Linux


def cold_start(model_dir, repeats, threads):
    """(seconds with the data file in the page cache: best of repeats, seconds with it evicted first: one run)."""
    from benchmarks.checkpoint import evict_from_page_cache

    warm = min(run(cli_command(model_dir, 1), threads)[0] for _ in range(repeats))
    evict_from_page_cache(model_dir / "model.ckpt.data-00000-of-00001")
    return warm, run(cli_command(model_dir, 1), threads)[0]


def fmt(value, unit=""):
    if value is None:
        return "—"
    digits = 3 if abs(value) < 1 else 2 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{value:,.{digits}f}{unit}"


def row(workload, ours, hf=None, textbook=None, ratio=None, target="report", met=None):
    return [workload, fmt(ours), fmt(hf), fmt(textbook), fmt(ratio, "x"), target, verdict(met)]


def seconds(report, name):
    return report["results"][name][0]


def workload_rows(runs, model_dir, args):
    """The rows of every workload on 124M, the CLI's cold start and peak RSS."""
    ours, hf, textbook = runs["ours"], runs["hf"], runs["textbook"]
    tok_s = lambda report, name, n: n / seconds(report, name)
    decode = [tok_s(r, "decode", N_NEW) for r in (ours, hf, textbook)]
    ttft = [seconds(r, "ttft") for r in (ours, hf, textbook)]
    deep = [tok_s(r, "decode_deep", N_STEPS) for r in (ours, hf)]
    short = [tok_s(r, "decode_short", N_STEPS) for r in (ours, hf)]
    score = [tok_s(r, "score", SCORE_TOKENS - 1) for r in (ours, hf)]
    batch = [tok_s(r, "batch", BATCH * N_NEW) for r in (ours, hf)]
    warm, evicted = cold_start(model_dir, args.repeats, args.threads)
    peak = peak_rss(model_dir, N_NEW, args.threads)
    data = (model_dir / "model.ckpt.data-00000-of-00001").stat().st_size
    at_least = lambda key, ratio: (f">= {TARGETS[key]}x HF", ratio >= TARGETS[key])
    return [
        row("1 decode, batch 1, 10-token prompt + 40 (tok/s)", *decode, decode[0] / decode[1],
            *at_least("decode", decode[0] / decode[1])),
        row("2 time to first token, 1000-token prompt (s)", *ttft, ttft[0] / ttft[1], f"<= {TARGETS['ttft']}x HF",
            ttft[0] / ttft[1] <= TARGETS["ttft"]),
        row("3 decode at 900 tokens of context, tokens 1-21 (tok/s)", *deep, None, deep[0] / deep[1],
            *at_least("decode_deep", deep[0] / deep[1])),
        row("3b the same at 10 tokens of context (tok/s)", *short, None, short[0] / short[1]),
        row("3c ours at 900 tokens / ours at 10", deep[0] / short[0], target=f">= {TARGETS['deep_vs_short']}x",
            met=deep[0] / short[0] >= TARGETS["deep_vs_short"]),
        row(f"4 score {SCORE_TOKENS:,} tokens, stride 512 (tok/s)", *score, None, score[0] / score[1],
            *at_least("score", score[0] / score[1])),
        row("5 batch of 8, 10-token prompts + 40 each (tok/s)", *batch, None, batch[0] / batch[1],
            *at_least("batch", batch[0] / batch[1])),
        row("6 cold start: CLI start to exit, 1 token (s)", warm, target=f"<= {TARGETS['cold_start']} s",
            met=warm <= TARGETS["cold_start"]),
        row("6b the same, data file evicted from page cache (s)", evicted),
        row(f"7 peak RSS, CLI, 40 tokens (MB; data {data / 1e6:,.0f} MB)", peak / 1e6, ratio=peak / data,
            target=f"<= {TARGETS['rss']}x data", met=peak / data <= TARGETS["rss"]),
    ]


def size_rows(runs, model_dirs, args):
    """Decoding of every other size, and 1558M's peak RSS and KV cache."""
    rows = []
    for size, engines in runs.items():
        if size == "124M":
            continue
        ours, hf = (N_NEW / seconds(engines[e], "decode") for e in ("ours", "hf"))
        rows.append(row(f"8 decode {size}, batch 1, 10 + 40 (tok/s)", ours, hf, None, ours / hf))
        if size == "1558M":
            data = (model_dirs[size] / "model.ckpt.data-00000-of-00001").stat().st_size
            peak = peak_rss(model_dirs[size], N_NEW, args.threads)
            rows.append(row(f"8b 1558M peak RSS, CLI, 40 tokens (MB; data {data / 1e6:,.0f} MB)", peak / 1e6,
                            ratio=peak / data))
    return rows


def bound_rows(runs, bounds):
    """Our figures beside what the matrix products alone would allow, measured on each model's own matrices."""
    rows = []
    for size, engines in runs.items():
        decode, b = N_NEW / seconds(engines["ours"], "decode"), bounds[size]
        bound, targeted = 1 / b["gemv_seconds"], size == "124M"  # the targets are 124M's; other sizes report
        rows.append([f"decode {size} (tok/s) / gemv bound ({b['gemv_bytes'] / b['gemv_seconds'] / 1e9:.1f} GB/s)",
                     fmt(decode), fmt(bound), f"{decode / bound:.0%}", f">= {TARGETS['gemv']:.0%}" if targeted
                     else "report", verdict(decode / bound >= TARGETS["gemv"] if targeted else None)])
        if targeted:
            rate = b["sgemm_flops_per_second"]
            bound_s, ttft = b["prefill_flops"] / rate, seconds(engines["ours"], "ttft")
            rows.append([f"time to first token (s) / sgemm bound ({b['prefill_flops'] / 1e9:.0f} GFLOP "
                         f"at {rate / 1e9:.0f} GFLOP/s)", fmt(ttft), fmt(bound_s), f"{bound_s / ttft:.0%}",
                         f">= {TARGETS['sgemm']:.0%}", verdict(bound_s / ttft >= TARGETS["sgemm"])])
    return rows


def notes(runs):
    """Whether the engines agree, as they should from the same weights: greedy ids, and the scores' totals."""
    out = []
    for size, engines in runs.items():
        for name in ("decode", "ttft", "decode_short", "decode_deep", "batch"):
            ids = {e: r["results"][name][1] for e, r in engines.items() if name in r.get("results", {})}
            if ids:
                differ = [e for e in ids if ids[e] != ids["ours"]]
                out.append(f"{size} {name}: " + (f"{', '.join(differ)} chose other ids than ours" if differ else
                                                 f"the same greedy ids from {', '.join(ids)}"))
        if "score" in engines["ours"].get("results", {}):
            totals = [engines[e]["results"]["score"][1] for e in ("ours", "hf")]
            out.append(f"{size} score: total log-prob {totals[0]:,.3f} (ours), {totals[1]:,.3f} (HF)")
    return "\n".join(out)


def machine(runs, args):
    """The lines above the tables: the machine, the libraries, the threads."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    first = next(iter(runs.values()))
    hf = first["hf"].get("hf", {})
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    engine_files = ["gpt2.py", "generation.py", "kvcache.py", "decoding.py"]
    changed = ", with uncommitted changes" if git("status", "--porcelain", *engine_files) else ""
    return "\n".join([
        f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, numpy {first['ours']['numpy']} "
        f"({blas()}), torch {hf.get('torch', '—')}, transformers {hf.get('transformers', '—')}",
        f"threads: {args.threads} each (OPENBLAS_NUM_THREADS for ours, torch intra-op {hf.get('threads', '—')} for HF, "
        f"attention: {hf.get('attn', '—')}); ours: commit {git('log', '-1', '--format=%h %cs')}{changed}",
        f"best of {args.repeats} runs each after a warm-up; HF: GPT2LMHeadModel.generate(), KV cache on; textbook: "
        f"picoGPT's forward pass in float32, no KV cache{'; TINY MODEL, not GPT-2 124M' if args.tiny else ''}",
        "",
    ])


def blas():
    """numpy's BLAS, as its build config names it."""
    import numpy as np

    info = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return f"{info.get('name', '?')} {info.get('version', '')}".strip()


def profile_markdown_table(report):
    header = ["workload (s of one run)", "total", *PARTS, "rest"]
    rows = []
    for name, parts in report.items():
        rest = parts["seconds"] - sum(parts.get(p, 0) for p in PARTS)
        rows.append([name, fmt(parts["seconds"]), *(f"{parts.get(p, 0) / parts['seconds']:.0%}" for p in PARTS),
                     f"{rest / parts['seconds']:.0%}"])
    return markdown_table(header, rows)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="124M", help="comma-separated sizes; 124M runs every workload, the "
                        "others decoding (and 1558M its peak RSS)")
    add_run_options(parser)
    parser.add_argument("--profile", action="store_true", help="instead, where our engine's time goes on 124M")
    args = parser.parse_args(argv)
    args.sizes = args.sizes.split(",")
    if unknown := [s for s in args.sizes if s not in SHAPES]:
        parser.error(f"unknown size {unknown[0]!r}: choose from {', '.join(SHAPES)}")
    if "124M" not in args.sizes:
        parser.error("--sizes must include 124M, which runs every workload")
    return check_run_options(parser, args)


def main(argv=None):
    args = parse_args(argv)
    model_dirs = {}
    for size in args.sizes:
        try:
            model_dirs[size] = ensure_checkpoint(size, args.models_dir, TINY if args.tiny else None)
        except OSError as e:
            print(f"{size}: skipped: {e}")
    if args.profile:
        report = run_worker("profile", model_dirs["124M"], WORKLOADS, args)["profile"]
        print(f"where the time goes, share of each workload's time (ours, {args.threads} threads):\n")
        print(profile_markdown_table(report))
        return
    runs, bounds = {}, {}
    for size, model_dir in model_dirs.items():
        workloads = WORKLOADS if size == "124M" else ["decode"]
        runs[size] = {engine: run_worker(engine, model_dir, workloads, args) for engine in ("ours", "hf")}
        if size == "124M":
            runs[size]["textbook"] = run_worker("textbook", model_dir, ["decode", "ttft"], args)
        bounds[size] = run_worker("bounds", model_dir, [], args)["bounds"]
    rows = workload_rows(runs["124M"], model_dirs["124M"], args) + size_rows(runs, model_dirs, args)
    hparams = utils.load_hparams(model_dirs[args.sizes[-1]] / "hparams.json")
    kv = kv_cache_bytes(hparams["n_layer"], hparams["n_embd"], 1, hparams["n_ctx"])
    print(machine(runs, args))
    print(markdown_table(["workload", "ours", "HF", "textbook", "ratio", "target", "met"], rows))
    print()
    print(markdown_table(["bound", "ours", "bound", "of bound", "target", "met"], bound_rows(runs, bounds)))
    print()
    print(f"KV cache at n_ctx ({hparams['n_ctx']} positions, batch 1) for {args.sizes[-1]}: {kv / 1e6:,.1f} MB; "
          f"the weights: {data_bytes(hparams) / 1e6:,.0f} MB")
    print(notes(runs))


if __name__ == "__main__":
    main()
