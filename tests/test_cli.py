"""`python gpt2.py ...` as a user runs it: output, --help, and one-line errors with a non-zero exit."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import openai_files
import gpt2
import textstream
import utils
from conftest import ROOT


def run_cli(*args, env=None):
    # A base URL where nothing listens, so a test can never reach the internet.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    env = {**os.environ, "GPT2_BASE_URL": f"http://127.0.0.1:{closed_port}", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "gpt2.py"), *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def assert_clean_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and result.stdout == ""
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.fixture
def tiny_dir(checkpoints):
    return checkpoints["tiny"][0]


def test_cli_prints_the_greedy_continuation(tiny_dir):
    prompt = "Alan Turing theorized that computers would one day become"
    result = run_cli(prompt, "--n_tokens", 12, "--models_dir", tiny_dir)
    assert result.returncode == 0, result.stderr
    encoder, hparams, params = utils.load_encoder_hparams_and_params("124M", tiny_dir)
    out = gpt2.generate(encoder.encode(prompt), params, hparams["n_head"], n_tokens=12)
    assert result.stdout == textstream.decode_text(out, encoder) + "\n"


def test_help_shows_defaults():
    result = run_cli("--help")
    assert result.returncode == 0
    for default in ("(default: 40)", "(default: 124M)", "(default: models)"):
        assert default in result.stdout


def test_unknown_model_size(tmp_path):
    assert_clean_error(run_cli("hi", "--model_size", "7B", "--models_dir", tmp_path), "invalid choice: '7B'", "124M")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n_tokens", ["0", "-3", "many"])
def test_n_tokens_below_one(tmp_path, n_tokens):
    assert_clean_error(run_cli("hi", "--n_tokens", n_tokens, "--models_dir", tmp_path), "at least 1")


def test_prompt_longer_than_the_context(tiny_dir):
    result = run_cli("hello" + " hello" * 99, "--n_tokens", 40, "--models_dir", tiny_dir)
    assert_clean_error(result, "the prompt (100 tokens) plus n_tokens (40) is 140 tokens", "context of 128 (n_ctx)")


def test_empty_prompt(tiny_dir):
    assert_clean_error(run_cli("", "--models_dir", tiny_dir), "the prompt is empty")


def test_weights_missing_and_no_network(tmp_path):
    result = run_cli("hi", "--models_dir", tmp_path)
    assert_clean_error(result, "could not download", "`python utils.py download --model_size 124M`",
                       f"into {tmp_path}/", "--models_dir")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hparams.json" in result.stderr and "encoder.json" not in result.stderr  # what is missing: the checkpoint
    assert not openai_files.model_is_present(tmp_path / "124M")
    assert sorted(p.name for p in (tmp_path / "124M").iterdir()) == ["encoder.json", "vocab.bpe"]  # the shipped vocab


def test_checkpoint_that_does_not_fit_its_hparams(tiny_dir, tmp_path):
    from test_utils import copy_model

    copy_model(tiny_dir / "124M", tmp_path, n_embd=32)
    result = run_cli("hi", "--models_dir", tmp_path)
    assert_clean_error(result, "tensor model/wte has shape [50257, 64], but hparams.json implies [50257, 32]")
    assert len(result.stderr.strip().splitlines()) == 1


def test_seeded_samples_in_one_batch(tiny_dir):
    args = ("Once upon a time", "--n_samples", 3, "--temperature", 1.5, "--top_k", 40, "--top_p", 0.95,
            "--seed", 7, "--n_tokens", 8, "--models_dir", tiny_dir)
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    headers = [line for line in first.stdout.splitlines() if line.startswith("=== ")]
    assert headers == [f"=== {i}/3: Once upon a time" for i in (1, 2, 3)]
    assert run_cli(*args[:-3], "--seed", 8, "--models_dir", tiny_dir).stdout != first.stdout


def test_prompts_file_gives_each_prompt_its_own_continuation(tiny_dir, tmp_path):
    prompts = ["The dog", "Alan Turing theorized that computers", "x"]
    path = tmp_path / "prompts.txt"
    path.write_text(prompts[0] + "\n\n" + prompts[1] + "\n" + prompts[2] + "\n", encoding="utf-8")
    result = run_cli("--prompts_file", path, "--n_tokens", 6, "--models_dir", tiny_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for i, prompt in enumerate(prompts):
        alone = run_cli(prompt, "--n_tokens", 6, "--models_dir", tiny_dir).stdout
        assert lines[2 * i] == f"=== {i + 1}/3: {prompt}"
        assert lines[2 * i + 1] + "\n" == alone


def test_stop_string(tiny_dir):
    full = run_cli("The dog", "--n_tokens", 12, "--models_dir", tiny_dir).stdout
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    stopped = run_cli("The dog", "--n_tokens", 12, "--stop", stop, "--models_dir", tiny_dir)
    assert stopped.stdout == full[: full.index(stop)] + "\n"


def test_score_prints_log_prob_and_perplexity(tiny_dir):
    text = "Alan Turing theorized that computers would one day become"
    result = run_cli(text, "--score", "--per_token", "--models_dir", tiny_dir)
    assert result.returncode == 0, result.stderr
    encoder, hparams, params = utils.load_encoder_hparams_and_params("124M", tiny_dir)
    ids = encoder.encode(text)
    logprobs = gpt2.score(ids, params, hparams["n_head"])
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(ids) - 1 + 1
    assert lines[1].split()[:3] == ["1", str(ids[1]), f"{logprobs[0]:.4f}"]
    perplexity = float(np.exp(-logprobs.mean()))
    assert lines[-1].startswith(f"tokens scored: {len(ids) - 1}  total log-prob: {logprobs.sum():.4f} nats")
    assert abs(float(lines[-1].split()[-1]) - perplexity) < 1e-3 * perplexity


def test_allow_special_reads_endoftext_as_one_token(tiny_dir):
    text = "<|endoftext|>Hello"
    as_text = run_cli(text, "--score", "--models_dir", tiny_dir).stdout
    as_special = run_cli(text, "--score", "--allow_special", "--models_dir", tiny_dir).stdout
    assert as_text.startswith("tokens scored: 7 ") and as_special.startswith("tokens scored: 1 ")


def test_interactive_reads_prompts_until_eof_one_output_line_per_input_line(tiny_dir):
    env = {"PYTHONIOENCODING": "utf-8"}
    stdin = "The dog\n\n" + "hello" + " hello" * 200 + "\nAlan Turing\n"
    result = subprocess.run(
        [sys.executable, str(ROOT / "gpt2.py"), "--interactive", "--n_tokens", "5", "--models_dir", str(tiny_dir)],
        input=stdin, capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    dog, alan = (run_cli(p, "--n_tokens", 5, "--models_dir", tiny_dir).stdout.rstrip("\n") for p in ("The dog", "Alan Turing"))
    assert result.stdout.splitlines() == [dog, "", "", alan]  # a blank line and a failing one answer with ""
    assert "the prompt (201 tokens) plus n_tokens (5)" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1  # no hint and no prompt when stdin is not a terminal


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "give a prompt, or --prompts_file, or --interactive"),
        (("hi", "--prompts_file", "p.txt"), "give a prompt or --prompts_file, not both"),
        (("hi", "--temperature", "-1"), "temperature must be a number >= 0"),
        (("hi", "--temperature", "1", "--top_p", "2"), "top_p must be a number in (0, 1]"),
        (("--prompts_file", "no/such/file.txt"), "cannot read prompts from no/such/file.txt"),
        (("hi", "--score", "--stride", "500"), "stride must be a whole number from 1 to n_ctx - 1 (127)"),
        (("hi", "--score"), "scoring needs at least 2 tokens"),
    ],
)
def test_bad_generation_options(tiny_dir, args, message):
    assert_clean_error(run_cli(*args, "--models_dir", tiny_dir), message)


def test_prompts_file_with_samples(tiny_dir, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("The dog\nA cat\n", encoding="utf-8")
    result = run_cli("--prompts_file", path, "--n_samples", 2, "--temperature", 1, "--seed", 3, "--n_tokens", 4,
                     "--models_dir", tiny_dir)
    assert result.returncode == 0, result.stderr
    headers = [line for line in result.stdout.splitlines() if line.startswith("=== ")]
    assert headers == ["=== 1/4: The dog", "=== 2/4: The dog", "=== 3/4: A cat", "=== 4/4: A cat"]


def test_verify_flag(tiny_dir, tmp_path):
    ok = run_cli("--verify", "--models_dir", tiny_dir)
    assert ok.returncode == 0 and ok.stdout == "" and "bytes of tensors match their crc32c" in ok.stderr
    from test_utils import copy_model

    data = copy_model(tiny_dir / "124M", tmp_path) / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert run_cli("hi", "--n_tokens", 2, "--models_dir", tmp_path).returncode == 0  # not checked unless asked
    assert_clean_error(run_cli("hi", "--verify", "--models_dir", tmp_path), "fails its crc32c check")


def test_one_thread_gives_the_same_text(tiny_dir):
    """The engine spreads work over OpenBLAS's threads only; with one thread it runs the same and says the same."""
    prompt = "Alan Turing theorized that computers would one day become"
    default = run_cli(prompt, "--n_tokens", 12, "--models_dir", tiny_dir)
    one = run_cli(prompt, "--n_tokens", 12, "--models_dir", tiny_dir,
                  env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0 and default.returncode == 0, one.stderr
    assert one.stdout == default.stdout
