"""Known answers from OpenAI's real 124M weights; they run only when models/124M holds them."""
import pytest

import openai_files
import gpt2
import utils
from conftest import ROOT

pytestmark = pytest.mark.skipif(
    not openai_files.model_is_present(ROOT / "models" / "124M"),
    reason="OpenAI's 124M weights are not in models/124M (python gpt2.py downloads them)",
)


@pytest.fixture(scope="module")
def gpt2_124m():
    return utils.load_encoder_hparams_and_params("124M", ROOT / "models")


def test_greedy_ids_after_the_dog(gpt2_124m):
    _, hparams, params = gpt2_124m
    expected = [373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688, 290, 2688, 27262, 13, 198, 198, 464, 3290]
    assert gpt2.generate([464, 3290], params, hparams["n_head"], n_tokens=18) == expected


def test_alan_turing(gpt2_124m):
    encoder, hparams, params = gpt2_124m
    ids = encoder.encode("Alan Turing theorized that computers would one day become")
    out = gpt2.generate(ids, params, hparams["n_head"], n_tokens=8)
    assert encoder.decode(out) == " the most powerful machines on the planet."
