"""--inspect and --html from the command line, and the page they write opened in a real browser: Debian's
chromium, headless, driven by chromedriver through selenium. The browser tests skip only when chromium or
chromedriver is not installed (.ci/run installs both)."""
import html
import json
import shlex
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import gpt2
import lens
import lens_html
import utils
from conftest import ROOT
from test_cli import assert_clean_error, run_cli

TEXT = "The quick brown fox jumps over the lazy dog. </script> {data} ünïcode 😀"


@pytest.fixture(scope="module")
def tiny(checkpoints):
    models_dir, model_size, hparams, _ = checkpoints["tiny"]
    encoder, hparams, params = utils.load_encoder_hparams_and_params(model_size, models_dir)
    return models_dir, encoder, hparams, params


def test_inspect_prints_the_token_view(tiny):
    models_dir, encoder, hparams, params = tiny
    result = run_cli(TEXT, "--inspect", "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr
    ids = encoder.encode(TEXT)
    assert result.stdout == lens.Inspection(ids, params, hparams["n_head"], encoder).table() + "\n"
    header, first, *rows = result.stdout.splitlines()
    assert header.split()[:5] == ["pos", "token", "prob", "rank", "entropy"] and "(no context: not scored)" in first
    view = lens.token_view(ids, params, hparams["n_head"])
    assert len(rows) == len(ids) - 1
    for row, token_id, rank, prob in zip(rows, ids[1:], view.rank, view.prob):  # the figures, from the API directly
        assert repr(lens.token_text(encoder, token_id)) in row
        assert f" {prob:.3g} " in row and f" {rank} " in row


def test_prepend_eot_scores_the_first_token(tiny):
    models_dir, encoder, hparams, params = tiny
    result = run_cli("Hello world", "--inspect", "--prepend_eot", "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr
    _, first, *rows = result.stdout.splitlines()
    assert "'<|endoftext|>'" in first and "context: <|endoftext|> before the text" in first
    assert [row.split()[1] for row in rows] == ["'Hello'", "'"]  # ' world' splits at its space
    view = lens.token_view(encoder.encode("Hello world"), params, hparams["n_head"], prepend_eot=True)
    assert rows[0].split()[2:4] == [f"{view.prob[0]:.3g}", str(view.rank[0])]


def test_html_writes_the_page_and_nothing_else(tiny, tmp_path):
    models_dir, *_ = tiny
    page = tmp_path / "page.html"
    result = run_cli(TEXT, "--html", page, "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and f"wrote {page}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]  # no temporary file left behind
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "http" not in text.split("</style>")[1].split('id="data"')[0]
    assert "</script> {data}" not in text and '"tokens"' in text  # the text's own "</script>" is escaped


def look_inside():
    return (ROOT / "README.md").read_text().split("## Look inside")[1].split("\n## ")[0]


def test_the_readme_worked_example_runs(tiny, monkeypatch, capsys):
    _, encoder, hparams, params = tiny
    code = look_inside().split("```python\n")[1].split("```")[0]
    monkeypatch.setattr(utils, "load_encoder_hparams_and_params", lambda size, models_dir: (encoder, hparams, params))
    exec(compile(code, "README.md", "exec"), {})  # on the tiny random model instead of 124M
    found, ablated, *lens_rows = capsys.readouterr().out.splitlines()
    assert found.startswith("head ") and found.endswith("of its attention on the previous token")
    assert ablated.startswith("mean log-prob of the next token: ") and ", without the head: " in ablated
    assert len(lens_rows) == hparams["n_layer"] + 1 and lens_rows[-1].endswith("the final choice ranks 1")


def test_the_readme_commands_run(tiny, tmp_path):
    models_dir, *_ = tiny
    commands = [line.split("  #")[0] for line in look_inside().splitlines() if line.startswith("python gpt2.py")]
    assert len(commands) == 2
    for command in commands:
        shell = command.replace("python gpt2.py", f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'gpt2.py'))}")
        result = subprocess.run(["bash", "-c", f"{shell} --models_dir {shlex.quote(str(models_dir))}"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "cat.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    "args, messages",
    [(["--html", "{tmp}/missing/page.html"], ["cannot write the page to", "missing does not exist: create it first"]),
     (["--html", "{file}/page.html"], ["cannot write the page to {file}/page.html: {file} is not a folder"]),
     (["--html", "{tmp}"], ["cannot write the page to", "give a file name"]),
     (["--inspect", "--n_tokens", "5"], ["--n_tokens does nothing with --inspect, which generates nothing: drop it"]),
     (["--html", "{tmp}/p.html", "--temperature", "0.7", "--score"], ["--temperature and --score do nothing with --html"]),
     (["--prepend_eot"], ["--prepend_eot does nothing without --inspect or --html: drop it"]),
     (["--inspect", "--interactive"], ["--inspect looks at one text, the prompt: drop --interactive"]),
     (["--inspect", "--html", "{tmp}/p.html", "--n_samples", "2"], ["--n_samples does nothing with --inspect and --html"])],
)
def test_bad_options_are_one_line_errors(tiny, tmp_path, args, messages):
    models_dir, *_ = tiny
    args, messages = ([a.format(tmp=tmp_path, file=__file__) for a in strings] for strings in (args, messages))
    prompt = [] if "--interactive" in args else ["Hello"]
    result = run_cli(*prompt, *args, "--models_dir", models_dir)
    assert_clean_error(result, *messages)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "prompt, extra, message",
    [(" a" * 129, [], "the text is 129 tokens, beyond the model's context of 128 (n_ctx): this reads one window, so shorten"),
     (" a" * 128, ["--prepend_eot"], "the text is 129 tokens"),
     ("", [], "the text is empty"), ("Hi", [], "a text of one token has nothing to score")],
)
def test_texts_the_lens_cannot_read(tiny, tmp_path, prompt, extra, message):
    models_dir, *_ = tiny
    assert_clean_error(run_cli(prompt, "--html", tmp_path / "p.html", *extra, "--models_dir", models_dir), message)
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_a_page_whole(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("old")
    lens_html.write(page, "new")
    assert page.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["page.html"]


def test_a_page_interrupted_while_written_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(self, *args, **kwargs):
        open(self, "w").write("half a pa")
        raise KeyboardInterrupt

    monkeypatch.setattr(lens_html.Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lens_html.write(tmp_path / "page.html", "a whole page")
    assert list(tmp_path.iterdir()) == []


def test_the_table_alone_needs_no_lens_nor_patterns(tiny):
    _, encoder, hparams, params = tiny
    ids = encoder.encode(TEXT)
    deep, shallow = (lens.Inspection(ids, params, hparams["n_head"], encoder, deep=d) for d in (True, False))
    assert shallow.lens is None and shallow.patterns is None
    assert deep.patterns.shape == (hparams["n_layer"], hparams["n_head"], len(ids), len(ids))
    for field in ("prob", "entropy", "top_probs"):
        np.testing.assert_allclose(getattr(shallow.view, field), getattr(deep.view, field), rtol=1e-4, atol=1e-6)
    for field in ("ids", "rank", "top_ids"):
        np.testing.assert_array_equal(getattr(shallow.view, field), getattr(deep.view, field))
    with pytest.raises(ValueError, match="made with deep=False: it has no logit lens"):
        shallow.html()


def test_looking_inside_beyond_the_memory_available_is_one_line(tiny, monkeypatch):
    import argparse

    import cli

    _, encoder, hparams, params = tiny
    ids = encoder.encode(TEXT)
    needed = lens.inspection_bytes(len(ids), params, hparams["n_head"], deep=True)
    assert needed > lens.inspection_bytes(len(ids), params, hparams["n_head"], deep=False)
    monkeypatch.setattr(cli, "memory_available", lambda: needed - 1)
    args = argparse.Namespace(html="page.html", inspect=False, prepend_eot=False)
    with pytest.raises(ValueError, match=rf"^looking inside {len(ids)} tokens needs about [\d.]+ GiB of memory, but "
                                         r"[\d.]+ GiB is available: shorten the text, or drop --html$"):
        cli.inspect_prompt(ids, params, hparams["n_head"], encoder, args)


# ---- in the browser ----

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed: apt-get install -y chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # both paths given, so selenium never looks for (or downloads) a browser
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--window-size=1200,1600"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def open_page(driver, path):
    driver.get(path.as_uri())
    assert driver.execute_script("return document.body.dataset.ready") == "yes"
    assert driver.execute_script("return window.pageErrors") == []
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.fixture(scope="module")
def seen(tiny):
    """TEXT, then tokens that the model ranks 1st, 5th, 50th, 500th, 5000th...: every colour of the page."""
    _, encoder, hparams, params = tiny
    ids = encoder.encode(TEXT)
    for rank in (1, 5, 50, 500, 5000) * 2:
        logits = gpt2.gpt2([gpt2.EOT, *ids], **params, n_head=hparams["n_head"])[-1]
        ids.append(int(np.argsort(-logits, kind="stable")[rank - 1]))
    return lens.Inspection(ids, params, hparams["n_head"], encoder, k=5, prepend_eot=True)


def test_page_shows_each_token_coloured_by_rank_with_its_alternatives(browser, seen, tmp_path):
    path = tmp_path / "page.html"
    lens_html.write(path, seen.html())
    open_page(browser, path)
    spans = browser.find_elements("css selector", "#text .tok")
    assert [s.get_attribute("textContent") for s in spans] == seen.tokens and len(spans) == len(seen.ids)
    buckets = [s.get_attribute("class").split()[1] for s in spans]
    expected = ["r10" if r <= 10 else "r100" if r <= 100 else "r1000" if r <= 1000 else "rmore" for r in seen.view.rank]
    assert buckets == ["context", *expected] and set(buckets) == {"context", "r10", "r100", "r1000", "rmore"}
    position = int(np.argmin(seen.view.rank)) + 1  # the best-predicted token
    spans[position].click()
    cells = browser.find_elements("css selector", "#alternatives td:first-child")
    assert [c.get_attribute("textContent") for c in cells] == [quoted(seen, i) for i in seen.view.top_ids[position - 1]]
    assert f"rank {seen.view.rank[position - 1]}" in browser.find_element("id", "details").text


def quoted(seen, token_id):
    """A token as the page writes it: JSON.stringify's quoted string."""
    return json.dumps(seen.token_text(token_id), ensure_ascii=False)


def test_heatmap_of_a_chosen_layer_and_head_is_the_pattern_with_nothing_above_the_diagonal(browser, seen, tmp_path):
    from selenium.webdriver.support.ui import Select

    path = tmp_path / "page.html"
    lens_html.write(path, seen.html())
    open_page(browser, path)
    layer, head = 1, 2
    Select(browser.find_element("id", "layer")).select_by_value(str(layer))
    Select(browser.find_element("id", "head")).select_by_value(str(head))
    n = len(seen.ids)
    pixels = np.array(browser.execute_script(
        "const c = document.getElementById('heatmap'); return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]")[2],
        dtype=np.int64).reshape(n, n, 4)  # [query, key, rgba]
    above = np.triu(np.ones((n, n), dtype=bool), 1)
    assert np.all(pixels[above] == 0), "nothing may be drawn where a query cannot look"
    assert np.all(pixels[~above][:, 3] == 255)
    weights = seen.patterns[layer, head]
    np.testing.assert_allclose(255 - pixels[..., 0][~above], 255 * weights[~above], atol=0.51)  # white 0 .. blue 1
    assert not np.allclose(weights, seen.patterns[0, 0])  # another head would have drawn something else


def test_logit_lens_grid_and_its_sublayers(browser, seen, tmp_path):
    path = tmp_path / "page.html"
    lens_html.write(path, seen.html())
    open_page(browser, path)
    n_layer = seen.patterns.shape[0]
    rows = lambda: browser.find_elements("css selector", "#lens tr")[1:]
    assert [r.find_element("css selector", "th").text for r in rows()] == ["embed", *map(str, range(n_layer))]
    last = [c.get_attribute("textContent") for c in rows()[-1].find_elements("css selector", "td")]
    assert len(last) == len(seen.ids)
    assert all(cell.startswith(quoted(seen, i) + " ") for cell, i in zip(last, seen.lens.predicted)), last
    browser.find_element("id", "sublayers").click()
    assert len(rows()) == 2 * n_layer + 1 and rows()[1].find_element("css selector", "th").text == "0 attn"


def test_a_notebook_shows_the_page_in_a_frame(browser, seen, tmp_path):
    frame = seen._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and html.unescape(frame.split('srcdoc="')[1].split('" style=')[0]) == seen.html()
    path = tmp_path / "notebook.html"
    path.write_text(f"<!DOCTYPE html><meta charset='utf-8'><body>{frame}</body>", encoding="utf-8")
    browser.get(path.as_uri())
    browser.switch_to.frame(browser.find_element("tag name", "iframe"))
    try:
        assert browser.execute_script("return [document.body.dataset.ready, window.pageErrors]") == ["yes", []]
        assert len(browser.find_elements("css selector", "#text .tok")) == len(seen.ids)
    finally:
        browser.switch_to.default_content()


def test_the_page_the_cli_writes_opens(browser, tiny, tmp_path):
    models_dir, encoder, *_ = tiny
    path = tmp_path / "cli.html"
    assert run_cli("Alan Turing theorized that", "--html", path, "--models_dir", models_dir).returncode == 0
    open_page(browser, path)
    assert len(browser.find_elements("css selector", "#text .tok")) == len(encoder.encode("Alan Turing theorized that"))
