"""`python -m benchmarks.engine` end to end on a tiny random model: every workload and bound has its row, every
figure is a number, and the engines agree. Nothing here asserts a speed: timings on a shared machine are noise."""
import subprocess
import sys

import openai_files
from benchmarks.workers import prefill_flops
from conftest import ROOT


def number(cell):
    """'1,795' -> 1795.0, '3.53x' -> 3.53, '80%' -> 80.0"""
    return float(cell.replace(",", "").rstrip("x%"))


def rows_of(stdout):
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("| ") and not line.startswith(("| workload", "| bound", "| workload (s")):
            label, *cells = (cell.strip() for cell in line.strip().strip("|").split("|"))
            rows[label.split(" (")[0]] = cells
    return rows


def test_engine_benchmark_end_to_end(tmp_path):
    command = [sys.executable, "-m", "benchmarks.engine", "--tiny", "--repeats", "1", "--models_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = rows_of(result.stdout)
    workloads = {  # label -> the columns that must hold numbers: ours, HF, textbook, ratio
        "1 decode, batch 1, 10-token prompt + 40": [0, 1, 2, 3],
        "2 time to first token, 1000-token prompt": [0, 1, 2, 3],
        "3 decode at 900 tokens of context, tokens 1-21": [0, 1, 3],
        "3b the same at 10 tokens of context": [0, 1, 3],
        "3c ours at 900 tokens / ours at 10": [0],
        "4 score 4,000 tokens, stride 512": [0, 1, 3],
        "5 batch of 8, 10-token prompts + 40 each": [0, 1, 3],
        "6 cold start: CLI start to exit, 1 token": [0],
        "6b the same, data file evicted from page cache": [0],
        "7 peak RSS, CLI, 40 tokens": [0, 3],
    }
    for label, columns in workloads.items():
        assert label in rows, f"no row {label!r} in:\n{result.stdout}"
        for column in columns:
            assert number(rows[label][column]) > 0
        assert rows[label][-1] in ("yes", "NO", "—")
    bounds = [label for label in rows if label.startswith(("decode 124M", "time to first token"))]
    assert len(bounds) == 2, result.stdout
    for label in bounds:  # ours, bound, of bound, target, met
        assert number(rows[label][0]) > 0 and number(rows[label][1]) > 0 and rows[label][-1] in ("yes", "NO")
    assert openai_files.model_is_present(tmp_path / "tiny" / "124M")  # the cached checkpoint, in OpenAI's layout
    assert "threads: 2 each" in result.stdout or "threads: 1 each" in result.stdout
    # The same weights give the same greedy tokens, and the same score, in every engine.
    for name in ("decode", "ttft", "decode_short", "decode_deep"):
        assert f"124M {name}: the same greedy ids from ours, hf" in result.stdout
    assert "124M batch: the same greedy ids from ours, hf" in result.stdout
    ours, hf = (float(part.split()[0].replace(",", "")) for part in
                result.stdout.split("124M score: total log-prob ")[1].splitlines()[0].split(", "))
    assert abs(ours - hf) <= 1e-4 * abs(hf)


def test_profile_prints_where_the_time_goes(tmp_path):
    command = [sys.executable, "-m", "benchmarks.engine", "--tiny", "--profile", "--repeats", "1",
               "--models_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    for name in ("decode", "ttft", "decode_short", "decode_deep", "score", "batch"):
        shares = [number(cell.strip()) for cell in rows[name].strip().strip("|").split("|")[2:]]
        assert len(shares) == 6 and all(0 <= share <= 100 for share in shares)
        assert 90 <= sum(shares) <= 110  # the parts and the rest make up the whole


def test_prefill_flops_counts_what_a_first_token_needs():
    """124M, 1000 tokens: 12 blocks of matrices and causal attention, less the last block's work for the 999
    positions that only feed the cache, plus one row of the unembedding."""
    hparams = dict(n_embd=768, n_layer=12, n_vocab=50257)
    per_position = 2 * 768 * 768 * 12  # c_attn (3), c_proj (1), c_fc (4), c_proj (4) matrices of n_embd^2
    attention = 2 * 2 * 1000 * 1001 // 2 * 768
    saved = 999 * 2 * 768 * 768 * 10 + 2 * 2 * (1000 * 1001 // 2 - 1000) * 768  # all but k, v; the last query only
    assert prefill_flops(hparams, 1000) == 12 * (1000 * per_position + attention) - saved + 2 * 768 * 50257
