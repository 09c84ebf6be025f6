"""`python -m benchmarks.generation` end to end on a tiny random model: every row is there, every figure a number,
and ours and HF's beam searches chose the same ids. Nothing here asserts a speed: timings here are noise."""
import subprocess
import sys

from conftest import ROOT


def test_generation_benchmark_end_to_end(tmp_path):
    command = [sys.executable, "-m", "benchmarks.generation", "--tiny", "--repeats", "1", "--models_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| workload")]
    labels = [row[0] for row in rows]
    assert labels == ["greedy, 10-token prompt + 40", "beam search, num_beams 4, 10-token prompt + 40", "",
                      "8 samples of a 500-token prompt + 40 each",
                      "the same, the prompt given 8 times in a batch (read 8 times)"]
    for row in rows:
        for cell in row[1:4]:
            assert cell in ("", "—", "baseline") or float(cell.split("x")[0]) > 0
        assert row[-1] in ("yes", "NO", "—")
    assert "beam search: the same ids from ours and HF" in result.stdout
