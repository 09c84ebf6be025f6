"""`python -m benchmarks.engine` end to end on a tiny random model: every workload has its row and
every figure is a number. Nothing here asserts a speed: timings on a shared machine are noise."""
import subprocess
import sys

import download
from conftest import ROOT


def number(cell):
    """'1,795' -> 1795.0, '3.53x' -> 3.53, '80%' -> 80.0"""
    return float(cell.replace(",", "").rstrip("x%"))


def test_engine_benchmark_end_to_end(tmp_path):
    command = [sys.executable, "-m", "benchmarks.engine", "--tiny", "--sizes", "124M,355M", "--repeats", "1",
               "--models_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        if line.startswith("| ") and not line.startswith("| workload") and not line.startswith("| size"):
            label, *cells = (cell.strip() for cell in line.strip().strip("|").split("|"))
            rows[label.split(" (")[0]] = cells

    workloads = {  # label -> the columns that must hold numbers: ours, HF, textbook, ratio
        "1 decode, batch 1, 10-token prompt + 40": [0, 1, 2, 3],
        "2 time to first token, 1000-token prompt": [0, 1, 2, 3],
        "3 batch of 8, 10-token prompts + 40 each": [0, 1, 3],
        "4 cold start: CLI start to exit, 1 token": [0],
        "4b the same, data file evicted from page cache": [0],
        "5 peak RSS, CLI, 40 tokens": [0, 3],
        "6 decode 124M": [0, 1, 3],
        "6 decode 355M": [0, 1, 3],
    }
    for label, columns in workloads.items():
        assert label in rows, f"no row {label!r} in:\n{result.stdout}"
        for column in columns:
            assert number(rows[label][column]) > 0
        assert rows[label][-1] in ("yes", "NO", "—")
    for size in ("124M", "355M"):  # the bandwidth-bound table: weights, bound, ours, of bound, HF, of bound
        assert [number(cell) > 0 for cell in rows[size]] == [True] * 6
        assert download.model_is_present(tmp_path / "tiny" / size)  # the cached checkpoint, in OpenAI's layout
    assert "threads (asked for" in result.stdout and "memory read bandwidth" in result.stdout
    # The same weights give the same greedy tokens in all three engines.
    assert "124M decode: the same greedy ids from ours, hf, textbook" in result.stdout
    assert "124M batch: the same greedy ids from ours, hf" in result.stdout
