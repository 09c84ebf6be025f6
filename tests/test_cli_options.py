"""What the command line makes of its options: escapes in --stop, what turns sampling on, options that the
chosen mode would ignore, out-of-range values, and batches too big for memory. Each runs `python gpt2.py`.
"""
import re
import shlex
import subprocess
import sys

import pytest

import cli
import cli_options
import decoding
from conftest import ROOT
from test_cli import assert_clean_error, run_cli

README_PROMPT = "Q: What is 2+2?\nA:"


@pytest.fixture
def tiny_dir(checkpoints):
    return checkpoints["tiny"][0]


def readme_command(containing):
    """The README's example command line that contains `containing`, without its comment."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("python gpt2.py")]
    (line,) = [line for line in lines if containing in line]
    return line.split("  #")[0].strip()


def test_the_readme_stop_example_ends_before_the_first_newline(newline_model):
    command = readme_command("--stop")
    assert "ends before the first newline" in (ROOT / "README.md").read_text().split(command)[1].splitlines()[0]
    # As a user's bash runs it (its quoting decides what reaches us), on a model that does write newlines.
    shell = f"{shlex.quote(sys.executable)} {command.removeprefix('python ')} --models_dir {shlex.quote(str(newline_model))}"
    stopped = subprocess.run(["bash", "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    full = run_cli(README_PROMPT, "--n_tokens", 20, "--models_dir", newline_model).stdout
    before, newline, _ = full.partition("\n")
    assert before.strip() and newline and len(full) > len(before) + 2  # some text, a newline, then more
    assert stopped.stdout == before + "\n"


@pytest.mark.parametrize("text, stop", [(r"a\nb", "a\nb"), (r"\t", "\t"), (r"\r\n", "\r\n"), (r"C:\\x", "C:\\x"),
                                        ("plain é", "plain é")])
def test_stop_escapes(text, stop):
    assert cli_options.stop_string(text) == stop


@pytest.mark.parametrize("stop, message", [(r"\q", r"unknown escape \q"), ("x\\", "unknown escape \\:"),
                                           ("", "an empty stop string matches nowhere")])
def test_bad_stop_strings(tiny_dir, stop, message):
    assert_clean_error(run_cli("hi", "--stop", stop, "--models_dir", tiny_dir), "argument --stop", message)


def test_the_prompt_is_taken_literally(tiny_dir):
    # A backslash and an n, as the shell passed them: two tokens, not a newline.
    table = run_cli(r"x\ny", "--score", "--per_token", "--models_dir", tiny_dir).stdout
    assert [line.split()[-1] for line in table.splitlines()[1:-1]] == [r"'\\'", "'ny'"]


def test_top_k_beyond_the_vocabulary_keeps_every_token(tiny_dir):
    args = ("Once upon a time", "--temperature", 1, "--seed", 5, "--n_tokens", 8, "--models_dir", tiny_dir)
    clamped = run_cli(*args, "--top_k", 100000)
    assert clamped.returncode == 0, clamped.stderr
    assert clamped.stdout == run_cli(*args).stdout
    logits = decoding.np.float32([0.5, -1, 2])
    assert (decoding.top_k_filter(logits, 10) == logits).all()


def test_a_negative_seed_is_an_error_naming_it(tiny_dir):
    assert_clean_error(run_cli("hi", "--seed", -1, "--models_dir", tiny_dir), "argument --seed", "at least 0", "'-1'")


@pytest.mark.parametrize("option", [("--seed", 0), ("--top_k", 40), ("--top_p", 0.9)])
def test_sampling_options_alone_sample_at_temperature_one(tiny_dir, option):
    args = ("Once upon a time", "--n_tokens", 10, "--models_dir", tiny_dir)
    seed = () if option[0] == "--seed" else ("--seed", 0)
    implied = run_cli(*args, *option, *seed)
    assert implied.returncode == 0, implied.stderr
    assert implied.stdout == run_cli(*args, *option, *seed, "--temperature", 1).stdout
    assert implied.stdout != run_cli(*args).stdout  # not the greedy text


def test_the_seed_alone_changes_the_text(tiny_dir):
    args = ("Once upon a time", "--n_tokens", 10, "--models_dir", tiny_dir)
    assert len({run_cli(*args, "--seed", seed).stdout for seed in (1, 2, 3)}) > 1  # greedy, they were all one


def test_one_sample_stays_greedy(tiny_dir):
    args = ("Once upon a time", "--n_tokens", 10, "--models_dir", tiny_dir)
    assert run_cli(*args, "--n_samples", 1).stdout == run_cli(*args).stdout == run_cli(*args, "--temperature", 0).stdout


def test_n_samples_alone_gives_different_samples(tiny_dir):
    result = run_cli("Once upon a time", "--n_samples", 3, "--n_tokens", 10, "--models_dir", tiny_dir)
    assert result.returncode == 0, result.stderr
    texts = result.stdout.splitlines()[1::2]
    assert len(texts) == 3 and len(set(texts)) > 1  # greedy, they were three copies


@pytest.mark.parametrize("option", [("--seed", 1), ("--top_k", 5), ("--top_p", 0.5), ("--n_samples", 2)])
def test_temperature_zero_with_a_sampling_option_is_an_error(tiny_dir, option):
    result = run_cli("hi", "--temperature", 0, *option, "--models_dir", tiny_dir)
    assert_clean_error(result, "--temperature 0 is greedy", f"so {option[0]} would do nothing")


def test_help_says_what_turns_sampling_on():
    help_text = " ".join(run_cli("--help").stdout.split())
    assert "--top_k, --top_p, --seed or --n_samples above 1 without --temperature sample at temperature 1" in help_text
    assert r"\n \t \r and \\ are a newline, tab, return and backslash" in help_text


@pytest.mark.parametrize(
    "args, message",
    [
        (("hi", "--per_token"), "--per_token does nothing without --score"),
        (("hi", "--stride", 8), "--stride does nothing without --score"),
        (("hi", "--score", "--n_tokens", 5), "--n_tokens does nothing with --score"),
        (("hi there", "--score", "--temperature", 1, "--stop", "x"), "--temperature and --stop do nothing with --score"),
        (("hi there", "--score", "--n_samples", 2), "--n_samples does nothing with --score"),
        (("hi there", "--score", "--temperature", 0), "--temperature does nothing with --score"),
        (("hi", "--interactive"), "--interactive reads its prompts from stdin: drop the prompt"),
        (("--prompts_file", "p.txt", "--interactive"), "--interactive reads its prompts from stdin: drop --prompts_file"),
        (("--interactive", "--score"), "--interactive continues each line of stdin and scores nothing"),
        (("--interactive", "--n_samples", 2), "--n_samples does nothing with --interactive"),
        (("--interactive", "--per_token"), "--per_token does nothing with --interactive"),
        (("--verify", "--n_tokens", 5), "--n_tokens does nothing with --verify alone"),
        (("--verify", "--allow_special"), "--allow_special does nothing with --verify alone"),
    ],
)
def test_options_the_mode_would_ignore_are_errors(tiny_dir, args, message):
    result = run_cli(*args, "--models_dir", tiny_dir)
    assert_clean_error(result, message)
    assert len(result.stderr.splitlines()) == 2  # a one-line usage, then the error


def test_options_that_apply_are_accepted(tiny_dir, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("one two three\nfour five six\n")
    scored = run_cli("--prompts_file", path, "--score", "--per_token", "--stride", 1, "--allow_special", "--models_dir", tiny_dir)
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.count("tokens scored: 2 ") == 2


def test_a_batch_too_big_for_memory_is_refused_before_anything_is_allocated(tiny_dir):
    # Run from a small parent that reports its child's peak memory: a child forked by pytest itself would
    # count pytest's own memory in its peak.
    command = [sys.executable, ROOT / "gpt2.py", "Once upon a time", "--n_samples", 10**9, "--models_dir", tiny_dir]
    measure = ("import resource, subprocess, sys; result = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, result.returncode)")
    result = subprocess.run([sys.executable, "-c", measure, *map(str, command)], capture_output=True, text=True, timeout=300)
    peak_kib, returncode = map(int, result.stdout.split())
    assert returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    match = re.fullmatch(r"gpt2.py: error: generating 1,000,000,000 rows of 4 tokens plus 40 needs about ([\d,.]+) GiB of "
                         r"memory, but ([\d,.]+) GiB is available: lower --n_samples, or shorten the prompt, or lower --n_tokens", line)
    assert match, line
    assert float(match[1].replace(",", "")) > 1e5  # the logits alone: 10**9 rows x 50257 float32
    assert peak_kib < 300 * 1024  # the batch was never built


def test_generation_bytes_grows_with_each_size():
    hparams = dict(n_vocab=50257, n_ctx=128, n_embd=64, n_head=4, n_layer=2)
    one = cli.generation_bytes(1, 10, 20, hparams)
    assert cli.generation_bytes(2, 10, 20, hparams) == 2 * one
    assert cli.generation_bytes(1, 10, 500, hparams) == cli.generation_bytes(1, 10, 118, hparams)  # capped at n_ctx
    assert one >= 4 * 3 * 50257  # at least the logits, three times
