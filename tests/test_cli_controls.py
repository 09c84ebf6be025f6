"""The generation controls, beam search and --logprobs on the command line: what they print, what they mean in the
API, and the combinations that are errors. Each runs `python gpt2.py`."""
import pytest

import gpt2
import utils
from test_cli import assert_clean_error, run_cli

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def tiny(checkpoints):
    models_dir = checkpoints["tiny"][0]
    encoder, hparams, params = utils.load_encoder_hparams_and_params("124M", models_dir)
    return models_dir, encoder, hparams["n_head"], params


def generated(tiny, prompt=PROMPT, **options):
    models_dir, encoder, n_head, params = tiny
    return gpt2.generate(encoder.encode(prompt), params, n_head, **options)


def test_bad_words_ban_the_word_with_and_without_a_space(tiny):
    models_dir, encoder, _, _ = tiny
    free = generated(tiny, n_tokens=10)
    word = encoder.decode([free[4]]).strip()  # a word the free text writes
    result = run_cli(PROMPT, "--n_tokens", 10, "--bad_words", word, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr
    banned = [encoder.encode(word), encoder.encode(" " + word)]
    expected = generated(tiny, n_tokens=10, bad_words_ids=banned)
    assert result.stdout == encoder.decode(expected) + "\n" and expected != free
    assert not any(ids == [i] for ids in banned for i in expected)


def test_controls_mean_what_they_mean_in_the_api(tiny):
    models_dir, encoder, _, _ = tiny
    args = ("--repetition_penalty", 1.3, "--no_repeat_ngram_size", 2, "--min_new_tokens", 5)
    result = run_cli(PROMPT, "--n_tokens", 12, *args, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr
    expected = generated(tiny, n_tokens=12, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=5)
    assert result.stdout == encoder.decode(expected) + "\n" and expected != generated(tiny, n_tokens=12)


def logprob_table(lines):
    """The rows of a --logprobs table: (id, log-prob, as chosen, [top ids' log-probs])."""
    assert lines[0].split()[:6] == ["step", "id", "log-prob", "as", "chosen", "token"]
    rows = []
    for step, line in enumerate(lines[1:], start=1):
        cells = line.split()
        assert int(cells[0]) == step
        rows.append((int(cells[1]), float(cells[2]), float(cells[3])))
    return rows


def test_logprobs_table_after_the_text(tiny):
    models_dir, encoder, _, _ = tiny
    result = run_cli(PROMPT, "--n_tokens", 6, "--logprobs", 2, "--repetition_penalty", 1.5, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr
    text, *table = result.stdout.splitlines()
    ids, logprobs = generated(tiny, n_tokens=6, logprobs=2, repetition_penalty=1.5)
    assert text == encoder.decode(ids) and "most likely" in table[0]
    rows = logprob_table(table)
    assert [r[0] for r in rows] == ids
    assert [r[1] for r in rows] == pytest.approx([x.logprob for x in logprobs], abs=1e-4)
    assert [r[2] for r in rows] == pytest.approx([x.processed for x in logprobs], abs=1e-4)
    for line, record in zip(table[1:], logprobs):
        assert line.endswith(f"{repr(encoder.decode([record.top[-1][0]]))} {record.top[-1][1]:.4f}")


def test_n_samples_of_beam_search_are_the_best_beams(tiny):
    models_dir, encoder, _, _ = tiny
    result = run_cli(PROMPT, "--n_tokens", 8, "--num_beams", 3, "--n_samples", 2, "--length_penalty", 0.5,
                     "--early_stopping", "never", "--logprobs", 0, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr
    rows = generated(tiny, n_tokens=8, num_beams=3, num_return_sequences=2, length_penalty=0.5, early_stopping="never")
    lines = result.stdout.splitlines()
    assert lines[0] == f"=== 1/2: {PROMPT}" and lines[1] == encoder.decode(rows[0])
    second = lines.index(f"=== 2/2: {PROMPT}")
    assert lines[second + 1] == encoder.decode(rows[1])
    assert [r[0] for r in logprob_table(lines[2:second])] == rows[0]


def test_samples_and_a_prompts_file(tiny, tmp_path):
    models_dir, encoder, _, _ = tiny
    path = tmp_path / "prompts.txt"
    path.write_text("one two three\nfour\n")
    result = run_cli("--prompts_file", path, "--n_samples", 2, "--seed", 4, "--n_tokens", 5, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr
    headers = [line for line in result.stdout.splitlines() if line.startswith("===")]
    assert headers == ["=== 1/4: one two three", "=== 2/4: one two three", "=== 3/4: four", "=== 4/4: four"]


def test_help_groups_the_controls_and_beam_search():
    help_text = run_cli("--help").stdout
    flat = " ".join(help_text.split())
    assert "controls:" in help_text and "beam search:" in help_text
    assert "HuggingFace's generation controls" in flat and "N at most --num_beams" in flat
    assert "With --num_beams above 1 none of them apply: beam search is a search, not a draw." in flat
    for option in ("--repetition_penalty", "--no_repeat_ngram_size", "--bad_words", "--min_new_tokens", "--num_beams",
                   "--length_penalty", "--early_stopping {true,false,never}", "--logprobs N"):
        assert option in help_text


@pytest.mark.parametrize(
    "args, message",
    [
        (("--num_beams", 2, "--temperature", 0.7), "--num_beams 2 is a search, not a draw: drop --temperature"),
        (("--num_beams", 2, "--top_k", 5, "--seed", 1), "drop --top_k and --seed (or --num_beams)"),
        (("--num_beams", 2, "--slide"), "--slide and --num_beams do not go together"),
        (("--num_beams", 2, "--n_samples", 3), "--n_samples 3 is more than --num_beams 2"),
        (("--length_penalty", 2), "--length_penalty only applies to beam search: give --num_beams above 1"),
        (("--early_stopping", "true", "--num_beams", 1), "--early_stopping only applies to beam search"),
        (("--score", "--repetition_penalty", 1.2), "--repetition_penalty does nothing with --score"),
        (("--score", "--logprobs", 3), "--logprobs does nothing with --score"),
        (("--score", "--num_beams", 2, "--bad_words", "x"), "--bad_words and --num_beams do nothing with --score"),
        (("--repetition_penalty", 0), "argument --repetition_penalty: must be a number above 0, got '0'"),
        (("--repetition_penalty", "nan"), "must be a number above 0"),
        (("--length_penalty", "inf", "--num_beams", 2), "argument --length_penalty: must be a number, got 'inf'"),
        (("--bad_words", " "), "an empty bad word bans nothing"),
        (("--early_stopping", "sometimes", "--num_beams", 2), "invalid choice: 'sometimes'"),
        (("--logprobs", -1), "argument --logprobs: must be a whole number of at least 0"),
        (("--no_repeat_ngram_size", 0), "argument --no_repeat_ngram_size: must be a whole number of at least 1"),
    ],
)
def test_combinations_that_cannot_work_are_errors(tiny, args, message):
    models_dir = tiny[0]
    result = run_cli("hi there", *args, "--models_dir", models_dir)
    assert_clean_error(result, message)
    assert len(result.stderr.splitlines()) == 2  # a one-line usage, then the error


def test_logprobs_with_interactive_is_an_error(tiny):
    assert_clean_error(run_cli("--interactive", "--logprobs", 2, "--models_dir", tiny[0]),
                       "--logprobs prints a table after each text, and --interactive one line per prompt")
