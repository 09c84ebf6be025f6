"""lm-evaluation-harness (pinned: lm-eval[hf,api]==0.4.13) against the live server, offline.

Three small tasks written here, on local JSON files: a multiple-choice task, a loglikelihood_rolling perplexity task
(one document longer than a window) and a generate_until task with stop strings. lm-eval runs them with
`model="local-completions"` against the server (tests/serving.py) on the tiny random model, and with its own
`model="hf"` on the same weights (an HF folder written with save_pretrained). Per sample, the log-likelihoods agree
within float32 tolerance (RTOL, ATOL), is_greedy is the same and the generations are the same strings; so do the
aggregated metrics (acc, acc_norm, word and byte perplexity, bits_per_byte, exact_match). That holds with
tokenizer_backend=huggingface (the folder's tokenizer) and remote (the server's /tokenize, /detokenize and
/tokenizer_info, which lm-eval's default "auto" finds by itself), one request at a time or two at once, one prompt per
request or batches of them.

Offline: the HF variables are set, and looking up or connecting to any host but this one fails the module
(`loopback_only`).

lm-eval's API models keep one token of max_length for the token their scoring requests generate, and a rolling window
one more for its context: with max_length = n_ctx their windows are n_ctx - 2 tokens long. The hf run is given
max_length = n_ctx - 2 so that both cut the long document into the same windows.
"""
import contextlib
import json
import socket
import urllib.request

import pytest
import yaml

import utils
from conftest import write_hf_folder
from serving import serving

RTOL = ATOL = 1e-4  # float32 sums of up to a few hundred log-probs, by NumPy here and by PyTorch there
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
LOOPBACK = (None, "localhost", "127.0.0.1")  # the server's host: the only one this module may reach
# "\n" as real tasks stop; the others because this random model writes " purified purified purified purifiedwaves"
# and " envyPrettyPretty" (a stop string that is a whole token, and one inside a token)
STOP = ["\n", "waves", "etty", "Q:", "\n\n"]  # 5, and lm-eval adds <|endoftext|>: more than OpenAI's 4

CHOICE_DOCS = [  # lm-eval puts target_delimiter, a space, between the question and each choice
    # " purified purified" is the model's own greedy continuation of the first question: is_greedy is True for it
    {"question": "What is 2+2?", "choices": ["4", "purified purified", "five", "22"], "answer": 0},
    {"question": "Name a colour.", "choices": ["red", "green", "a very dark shade of blue"], "answer": 2},
    {"question": "Who wrote Hamlet?", "choices": ["Shakespeare", "Marlowe", "nobody at all"], "answer": 0},
    {"question": "Where is Paris?", "choices": ["in France", "in Texas"], "answer": 0},
    {"question": "Is water wet?", "choices": ["yes", "no", "it depends on what you mean by wet"], "answer": 1},
]
PERPLEXITY_DOCS = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"text": "Alan Turing theorized that computers would one day become the most powerful machines on the planet."},
    {"text": " ".join(["In the beginning the Universe was created. This has made a lot of people very angry and been "
                       "widely regarded as a bad move."] * 8)},  # 208 tokens: two windows
    {"text": "Ünïcödé, emoji 🦊 and numbers 3.14159 count by bytes, not by characters."},
]
GENERATE_DOCS = [
    {"question": "What is 2+2?", "answer": " purified purified purified purified"},  # cut at "waves": an exact match
    {"question": "Name a colour.", "answer": "red"},
    {"question": "Once upon a time", "answer": " happily ever after"},  # cut inside the token "Pretty"
    {"question": "Who wrote Hamlet?", "answer": " Shakespeare"},
    {"question": "Count to three.", "answer": " 1 2 3"},
]


def metric_list(*names):
    return [{"metric": name} for name in names]


TASKS = {  # name -> (config, docs)
    "tiny_choice": (dict(output_type="multiple_choice", doc_to_text="Q: {{question}}\nA:", doc_to_choice="{{choices}}",
                         doc_to_target="{{answer}}", metric_list=metric_list("acc", "acc_norm")),
                    CHOICE_DOCS),
    "tiny_perplexity": (dict(output_type="loglikelihood_rolling", doc_to_text="", doc_to_target="{{text}}",
                             metric_list=metric_list("word_perplexity", "byte_perplexity", "bits_per_byte")),
                        PERPLEXITY_DOCS),
    "tiny_generate": (dict(output_type="generate_until", doc_to_text="Q: {{question}}\nA:", doc_to_target="{{answer}}",
                           generation_kwargs={"until": STOP, "max_gen_toks": 10, "do_sample": False, "temperature": 0},
                           metric_list=metric_list("exact_match")),
                      GENERATE_DOCS),
}


def write_tasks(folder):
    """TASKS as lm-eval task configs (YAML) in folder, each reading its docs from a JSON-lines file beside it."""
    for name, (config, docs) in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
        dataset = {"dataset_path": "json", "test_split": "test",
                   "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "datasets")}}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **dataset, **config}))
    return folder


@contextlib.contextmanager
def loopback_only(attempts):
    """Looking up or connecting to any host but this one fails, and is appended to `attempts`."""
    getaddrinfo, connect = socket.getaddrinfo, socket.socket.connect

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            attempts.append(host)
            raise socket.gaierror(f"this test runs offline: no looking up {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            attempts.append(address)
            raise OSError(f"this test runs offline: no connection to {address}")
        return connect(sock, address)

    socket.getaddrinfo, socket.socket.connect = guarded_getaddrinfo, guarded_connect
    try:
        yield
    finally:
        socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect


@pytest.fixture(scope="module")
def offline():
    """lm-eval and HuggingFace offline for this module's tests, which fail if anything tried to go out."""
    attempts = []
    with pytest.MonkeyPatch.context() as patch, loopback_only(attempts):
        for name, value in OFFLINE.items():
            patch.setenv(name, value)
        # The same switches as the libraries read them when first imported: in a whole test run another module
        # has imported them already, online (evaluate then looks for its metrics in HF's S3 bucket).
        import datasets.config
        import evaluate.config
        import huggingface_hub.constants

        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        patch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
        # Every run records the environment, running torch's collect_env (pip, in subprocesses: 2 s); unused here.
        patch.setattr("lm_eval.evaluator.add_env_info", lambda results: None)
        yield
    assert attempts == [], f"lm-eval or HuggingFace tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def model(checkpoints, tmp_path_factory):
    """(encoder, hparams, params) of the tiny model, and the same weights as an HF folder."""
    models_dir, model_size, *_ = checkpoints["tiny"]
    encoder, hparams, params = utils.load_encoder_hparams_and_params(model_size, models_dir)
    return encoder, hparams, params, write_hf_folder(tmp_path_factory.mktemp("hf_tiny"), hparams, params)


@pytest.fixture(scope="module")
def server(model):
    encoder, hparams, params, _ = model
    with serving(encoder, hparams, params, name="tiny") as served:
        yield served


@pytest.fixture(scope="module")
def task_manager(offline, tmp_path_factory):
    from lm_eval.tasks import TaskManager

    # Only the tasks written here: indexing lm-eval's own hundreds of task folders takes 20 s.
    return TaskManager(include_path=str(write_tasks(tmp_path_factory.mktemp("tasks"))), include_defaults=False)


def evaluate(task_manager, model, model_args):
    """lm-eval's results for TASKS, every sample logged; the global random seeds are left as they are."""
    import lm_eval

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(TASKS), task_manager=task_manager,
                                   log_samples=True, random_seed=None, numpy_random_seed=None, torch_random_seed=None)


@pytest.fixture(scope="module")
def reference(model, task_manager):
    """lm-eval's own hf backend on the HF folder: the results to match."""
    _, hparams, _, folder = model
    return evaluate(task_manager, "hf", dict(pretrained=str(folder), dtype="float32", device="cpu", batch_size=1,
                                             max_length=hparams["n_ctx"] - 2))


def local_completions(server, model, tokenizer_backend, **args):
    """model_args for lm-eval's local-completions against the server: max_length is the model's n_ctx."""
    _, hparams, _, folder = model
    args = dict(model="tiny", base_url=f"{server.url}/v1/completions", max_length=hparams["n_ctx"], max_retries=1,
                **args)
    if tokenizer_backend is not None:
        args["tokenizer_backend"] = tokenizer_backend
    if tokenizer_backend == "huggingface":
        args["tokenizer"] = str(folder)
    return args


# ---- what a run gave: each sample's filtered_resps, in doc order

def responses(results, task):
    return [s["filtered_resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def loglikelihoods(results):
    """Every choice's log-likelihood, then every document's (rolling), as one list."""
    return ([ll for doc in responses(results, "tiny_choice") for ll, _ in doc]
            + [ll for (ll,) in responses(results, "tiny_perplexity")])


def is_greedy(results):
    return [greedy for doc in responses(results, "tiny_choice") for _, greedy in doc]


def generations(results):
    return [text for (text,) in responses(results, "tiny_generate")]


def metrics(results):
    """{"task/metric": value} of every metric but the standard errors."""
    return {f"{task}/{key.removesuffix(',none')}": value for task, values in results["results"].items()
            for key, value in values.items() if key.endswith(",none") and "_stderr" not in key}


def complete(server, prompt, max_tokens):
    """The server's greedy continuation of prompt, without stop strings."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    request = urllib.request.Request(f"{server.url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["choices"][0]["text"]


# ---- the tests

def test_the_reference_run_holds_what_the_comparison_needs(reference, server, model):
    """A choice that is the model's greedy continuation, a document longer than one window, generations cut by a
    stop string that is a whole token and by one inside a token, one exact match: agreeing on them means something."""
    encoder, hparams, *_ = model
    assert metrics(reference).keys() == {"tiny_choice/acc", "tiny_choice/acc_norm", "tiny_perplexity/word_perplexity",
                                         "tiny_perplexity/byte_perplexity", "tiny_perplexity/bits_per_byte",
                                         "tiny_generate/exact_match"}
    assert is_greedy(reference)[:4] == [False, True, False, False]
    assert len(encoder.encode(PERPLEXITY_DOCS[2]["text"])) > hparams["n_ctx"]
    generated = generations(reference)
    for doc, stop in [(0, "waves"), (2, "etty")]:
        assert complete(server, f"Q: {GENERATE_DOCS[doc]['question']}\nA:", 10).startswith(generated[doc] + stop)
    assert metrics(reference)["tiny_generate/exact_match"] == 1 / len(GENERATE_DOCS)


BACKENDS = [  # (tokenizer_backend, num_concurrent, batch_size): batches send a list of prompts in one request
    ("huggingface", 1, 1),
    ("remote", 1, 1),
    ("huggingface", 2, 1),
    ("remote", 2, 3),
]


@pytest.mark.parametrize("tokenizer_backend, num_concurrent, batch_size", BACKENDS)
def test_local_completions_gives_what_hf_gives(server, model, task_manager, reference, tokenizer_backend,
                                               num_concurrent, batch_size):
    args = local_completions(server, model, tokenizer_backend, num_concurrent=num_concurrent, batch_size=batch_size)
    results = evaluate(task_manager, "local-completions", args)
    assert loglikelihoods(results) == pytest.approx(loglikelihoods(reference), rel=RTOL, abs=ATOL)
    assert is_greedy(results) == is_greedy(reference)
    assert generations(results) == generations(reference)
    assert metrics(results) == pytest.approx(metrics(reference), rel=RTOL, abs=ATOL)


def test_lm_eval_finds_the_servers_tokenizer_by_itself(server, model, offline):
    """local-completions' default tokenizer_backend ("auto") asks the server's tokenizer routes and takes them."""
    from lm_eval.api.registry import get_model

    lm = get_model("local-completions")(**local_completions(server, model, None))
    assert lm.tokenizer_backend == "remote"
    assert lm.eot_token_id == 50256 and lm.tok_encode("Hello world") == [15496, 995]
