"""lens.py: every cached activation against TransformerLens and HuggingFace on the same weights, hooks that ablate,
patch and steer against the hand computation, the logit lens and the token view against the logits, bad input."""
import numpy as np
import pytest
import torch

import gpt2
import lens
import utils
from conftest import ROOT, SHAPES, hf_model

IDS = [40, 1101, 257, 1332, 13, 383, 2068, 7586, 21831]
OTHER = [464, 3290, 373, 845, 3621, 290, 262, 3797, 13]  # as long as IDS: for patching one into the other
BATCH = [IDS, OTHER]


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request, checkpoints):
    """(hparams, params loaded from the checkpoint on disk, the arrays written into it)."""
    models_dir, model_size, hparams, written = checkpoints[request.param]
    params = utils.load_gpt2_params_from_tf_ckpt(utils.checkpoint_prefix(models_dir / model_size), hparams)
    return hparams, params, written


def transformer_lens_model(hparams, params):
    """TransformerLens's own GPT-2 (HookedTransformer), configured by hand and holding exactly `params`: no
    download, and none of its weight processing (no folded LayerNorms, no centred weights)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    n_embd, n_head = hparams["n_embd"], hparams["n_head"]
    d = n_embd // n_head
    config = HookedTransformerConfig(
        n_layers=hparams["n_layer"], d_model=n_embd, n_ctx=hparams["n_ctx"], d_head=d, n_heads=n_head,
        d_vocab=hparams["n_vocab"], d_mlp=4 * n_embd, act_fn="gelu_new", normalization_type="LN", eps=1e-5,
        positional_embedding_type="standard", default_prepend_bos=False)
    model = HookedTransformer(config).eval()
    tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    state = {"embed.W_E": params["wte"], "pos_embed.W_pos": params["wpe"], "unembed.W_U": params["wte"].T,
             "unembed.b_U": np.zeros(hparams["n_vocab"], np.float32), "ln_final.w": params["ln_f"]["g"], "ln_final.b": params["ln_f"]["b"]}
    for i, block in enumerate(params["blocks"]):
        w, b = block["attn"]["c_attn"]["w"], block["attn"]["c_attn"]["b"]
        for j, name in enumerate("QKV"):  # c_attn's columns: q, k, v, each head after head
            state[f"blocks.{i}.attn.W_{name}"] = w[:, j * n_embd : (j + 1) * n_embd].reshape(n_embd, n_head, d).transpose(1, 0, 2)
            state[f"blocks.{i}.attn.b_{name}"] = b[j * n_embd : (j + 1) * n_embd].reshape(n_head, d)
        state[f"blocks.{i}.attn.W_O"] = block["attn"]["c_proj"]["w"].reshape(n_head, d, n_embd)
        state[f"blocks.{i}.attn.b_O"] = block["attn"]["c_proj"]["b"]
        for ours, theirs in (("c_fc", "in"), ("c_proj", "out")):
            state[f"blocks.{i}.mlp.W_{theirs}"], state[f"blocks.{i}.mlp.b_{theirs}"] = block["mlp"][ours]["w"], block["mlp"][ours]["b"]
        for ours, theirs in (("ln_1", "ln1"), ("ln_2", "ln2")):
            state[f"blocks.{i}.{theirs}.w"], state[f"blocks.{i}.{theirs}.b"] = block[ours]["g"], block[ours]["b"]
    missing, unexpected = model.load_state_dict({k: tensor(v) for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith(("IGNORE", "mask")) for k in missing), (missing, unexpected)  # buffers only
    return model


def layer_norm_of(name, params):
    """The (g, b) of the LayerNorm a hook_normalized name belongs to."""
    if name.startswith("ln_final"):
        return params["ln_f"]["g"], params["ln_f"]["b"]
    block = params["blocks"][int(name.split(".")[1])]
    ln = block["ln_1" if ".ln1." in name else "ln_2"]
    return ln["g"], ln["b"]


@pytest.mark.parametrize("ids", [IDS, BATCH], ids=["one text", "batch"])
def test_every_activation_matches_transformer_lens(model, ids):
    hparams, params, written = model
    with torch.no_grad():
        tl_logits, tl_cache = transformer_lens_model(hparams, written).run_with_cache(torch.tensor(np.atleast_2d(ids)))
    logits, cache = lens.run_with_cache(ids, params, hparams["n_head"])
    # TransformerLens 3 adds unembed.hook_in (the LayerNorm's output, our ln_final.hook_normalized) and hook_out (logits)
    tl_names = [name for name in tl_cache.keys() if not name.startswith("unembed.")]
    assert list(cache) == tl_names == list(lens.hook_names(hparams["n_layer"]))  # the same names, in order
    g, b = layer_norm_of("ln_final.hook_normalized", params)
    final = cache["ln_final.hook_normalized"] * g + b  # the LayerNorm's output, after its gain and bias
    np.testing.assert_allclose(final, tl_cache["unembed.hook_in"].numpy().reshape(final.shape), rtol=1e-4, atol=1e-4)
    for name, value in cache.items():
        expected = tl_cache[name].numpy() if np.ndim(ids) == 2 else tl_cache[name][0].numpy()  # no batch axis for one text
        assert value.shape == expected.shape and value.dtype == np.float32, name
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4, err_msg=name)  # -inf where TL has it
    np.testing.assert_allclose(logits, tl_logits.numpy() if np.ndim(ids) == 2 else tl_logits[0].numpy(), rtol=1e-4, atol=1e-4)


def test_residual_streams_and_patterns_match_huggingface(model):
    hparams, params, written = model
    hf = hf_model(hparams, written)
    hf.set_attn_implementation("eager")  # the one that returns the attention patterns
    with torch.no_grad():
        out = hf(torch.tensor(BATCH), output_hidden_states=True, output_attentions=True)
    logits, cache = lens.run_with_cache(BATCH, params, hparams["n_head"])
    hidden = [h.numpy() for h in out.hidden_states]  # the embeddings, then each block's output; ln_f on the last
    for layer in range(hparams["n_layer"]):
        check = lambda name, ref: np.testing.assert_allclose(cache[f"blocks.{layer}.{name}"], ref, rtol=1e-4, atol=1e-4, err_msg=name)
        check("hook_resid_pre", hidden[layer])
        check("attn.hook_pattern", out.attentions[layer].numpy())
        if layer < hparams["n_layer"] - 1:
            check("hook_resid_post", hidden[layer + 1])
    ln_f = params["ln_f"]  # HF's last hidden state is after ln_f, gain and bias included
    np.testing.assert_allclose(cache["ln_final.hook_normalized"] * ln_f["g"] + ln_f["b"], hidden[-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, out.logits.numpy(), rtol=1e-4, atol=1e-4)


def test_one_text_of_a_batch_is_that_text_alone_and_the_logits_are_the_plain_pass(model):
    hparams, params, _ = model
    logits, cache = lens.run_with_cache(BATCH, params, hparams["n_head"])
    alone_logits, alone = lens.run_with_cache(OTHER, params, hparams["n_head"])
    for name in cache:
        np.testing.assert_allclose(cache[name][1], alone[name], rtol=1e-4, atol=1e-4, err_msg=name)
    assert cache["hook_pos_embed"].shape == (2, len(IDS), hparams["n_embd"])
    np.testing.assert_allclose(logits, gpt2.gpt2(BATCH, **params, n_head=hparams["n_head"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(alone_logits, logits[1], rtol=1e-4, atol=1e-4)


def test_names_keep_only_what_is_asked_and_a_full_cache_costs_cache_bytes(model):
    hparams, params, _ = model
    n_head, n_layer = hparams["n_head"], hparams["n_layer"]
    _, full = lens.run_with_cache(BATCH, params, n_head)
    assert sum(a.nbytes for a in full.values()) == lens.cache_bytes(len(IDS), n_layer, hparams["n_embd"], n_head, 2)
    _, patterns = lens.run_with_cache(IDS, params, n_head, names=lambda name: name.endswith("hook_pattern"))
    assert list(patterns) == [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layer)]
    assert patterns["blocks.0.attn.hook_pattern"].shape == (n_head, len(IDS), len(IDS))
    _, two = lens.run_with_cache(IDS, params, n_head, names=["blocks.0.attn.hook_q", "hook_embed"])
    assert list(two) == ["hook_embed", "blocks.0.attn.hook_q"]
    assert list(lens.run_with_cache(IDS, params, n_head, names="ln_final.hook_scale")[1]) == ["ln_final.hook_scale"]


def test_the_readme_states_what_a_full_cache_of_124m_costs():
    gb = lens.cache_bytes(1024, n_layer=12, n_embd=768, n_head=12) / 1e9
    patterns = 12 * 12 * 1024 * 1024 * 4 / 1e6
    section = (ROOT / "README.md").read_text().split("## Look inside")[1].split("\n## ")[0]
    assert f"{gb:.2f} GB" in section and f"{patterns:.0f} MB" in section
    page = 12 * 12 * 1024 * 1025 / 2 * 4 / 3 / 1e6  # the patterns' bytes, lower triangle, in base64
    assert round(page, -1) == 100 and "about 100 MB for 124M at 1024 tokens" in section


def norm(x, g, b):  # [..., n_embd] -> [..., n_embd], LayerNorm in float64
    x = x.astype(np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b


def textbook_block(x, block, n_head):  # [n_seq, n_embd] float64 -> [n_seq, n_embd]: picoGPT's block, written out
    n_seq, n_embd = x.shape
    a = block["attn"]
    q, k, v = np.split(norm(x, **block["ln_1"]) @ a["c_attn"]["w"] + a["c_attn"]["b"], 3, axis=-1)
    heads = lambda t: t.reshape(n_seq, n_head, -1).transpose(1, 0, 2)  # [n_head, n_seq, d]
    scores = heads(q) @ heads(k).transpose(0, 2, 1) / np.sqrt(n_embd // n_head) + np.triu(np.full((n_seq, n_seq), -np.inf), 1)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    z = (pattern / pattern.sum(-1, keepdims=True)) @ heads(v)
    x = x + z.transpose(1, 0, 2).reshape(n_seq, n_embd) @ a["c_proj"]["w"] + a["c_proj"]["b"]
    h = norm(x, **block["ln_2"]) @ block["mlp"]["c_fc"]["w"] + block["mlp"]["c_fc"]["b"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    return x + h @ block["mlp"]["c_proj"]["w"] + block["mlp"]["c_proj"]["b"]


def textbook_logits(x, params, n_head, first_block):  # the rest of the model in float64 from block first_block on
    for block in params["blocks"][first_block:]:
        x = textbook_block(x.astype(np.float64), block, n_head)
    return norm(x, **params["ln_f"]) @ params["wte"].T.astype(np.float64)


def test_zero_ablating_a_head_equals_the_hand_computation(model):
    hparams, params, _ = model
    n_head, n_embd, layer, head = hparams["n_head"], hparams["n_embd"], 1, 2
    clean_logits, clean = lens.run_with_cache(IDS, params, n_head)
    np.testing.assert_allclose(textbook_logits(clean["hook_embed"] + clean["hook_pos_embed"], params, n_head, 0),
                               clean_logits, rtol=1e-3, atol=1e-3)  # the textbook agrees before any ablation

    def zero_head(z, name):  # z [pos, head, d_head], edited in place
        assert name == f"blocks.{layer}.attn.hook_z" and z.shape == (len(IDS), n_head, n_embd // n_head)
        z[:, head] = 0

    logits, cache = lens.run_with_cache(IDS, params, n_head, hooks={f"blocks.{layer}.attn.hook_z": zero_head})
    c_proj = params["blocks"][layer]["attn"]["c_proj"]
    z = clean[f"blocks.{layer}.attn.hook_z"].astype(np.float64)
    z[:, head] = 0
    attn_out = z.reshape(len(IDS), n_embd) @ c_proj["w"] + c_proj["b"]  # the other heads' outputs, through c_proj
    np.testing.assert_allclose(cache[f"blocks.{layer}.hook_attn_out"], attn_out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cache[f"blocks.{layer}.attn.hook_z"][:, head], 0)
    resid_mid = clean[f"blocks.{layer}.hook_resid_pre"] + attn_out
    np.testing.assert_allclose(cache[f"blocks.{layer}.hook_resid_mid"], resid_mid, rtol=1e-4, atol=1e-4)
    # The ablated block's MLP, then the rest, by the textbook: its block minus the attention already done.
    block = params["blocks"][layer]
    mlp_only = dict(block, attn=dict(block["attn"], c_proj={"w": np.zeros_like(c_proj["w"]), "b": np.zeros_like(c_proj["b"])}))
    after = textbook_block(resid_mid, mlp_only, n_head)
    np.testing.assert_allclose(cache[f"blocks.{layer}.hook_resid_post"], after, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, textbook_logits(after, params, n_head, layer + 1), rtol=1e-3, atol=1e-3)
    assert not np.allclose(logits, clean_logits, atol=1e-2), "the ablation should change the logits"


@pytest.mark.parametrize("layer", [0, 1])
def test_patching_the_residual_stream_of_a_into_b_makes_b_continue_as_a(model, layer):
    hparams, params, _ = model
    n_head = hparams["n_head"]
    a_logits, a = lens.run_with_cache(IDS, params, n_head)
    _, b = lens.run_with_cache(OTHER, params, n_head)
    patch = f"blocks.{layer}.hook_resid_pre"
    logits, patched = lens.run_with_cache(OTHER, params, n_head, hooks=[(patch, lambda x, name: a[name].copy())])
    later = lens.hook_names(hparams["n_layer"]).index(patch)
    for i, name in enumerate(lens.hook_names(hparams["n_layer"])):
        expected = a[name] if i >= later else b[name]  # B's own before the patch, A's from it on
        np.testing.assert_allclose(patched[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(logits, a_logits, rtol=1e-6, atol=1e-6)
    assert not np.allclose(a["hook_embed"], b["hook_embed"])


def test_a_steering_vector_is_added_and_the_cache_holds_what_the_pass_went_on_with(model):
    hparams, params, _ = model
    n_head, layer = hparams["n_head"], 1
    steer = np.random.default_rng(0).standard_normal(hparams["n_embd"]).astype(np.float32)
    _, clean = lens.run_with_cache(IDS, params, n_head)
    name = f"blocks.{layer}.hook_resid_pre"
    logits, cache = lens.run_with_cache(IDS, params, n_head, hooks={name: lambda x, name: x + steer})
    np.testing.assert_allclose(cache[name], clean[name] + steer, rtol=1e-6)
    np.testing.assert_allclose(logits, textbook_logits(clean[name] + steer, params, n_head, layer), rtol=1e-3, atol=1e-3)
    # The same array was blocks.0's resid_post: a hook's edits reach the pass, never an array already cached.
    np.testing.assert_array_equal(cache[f"blocks.{layer - 1}.hook_resid_post"], clean[f"blocks.{layer - 1}.hook_resid_post"])


def test_hooks_in_place_by_predicate_in_order_and_run_with_hooks(model):
    hparams, params, _ = model
    n_head, seen = hparams["n_head"], []

    def halve(x, name):
        seen.append(name)
        x *= np.float32(0.5)  # in place, returning None

    def double(x, name):
        return x * np.float32(2)

    in_place = lens.run_with_hooks(IDS, params, n_head, [(lambda n: n.endswith("hook_mlp_out"), halve)])
    returned = lens.run_with_hooks(IDS, params, n_head, {f"blocks.{i}.hook_mlp_out": lambda x, n: x * np.float32(0.5)
                                                         for i in range(hparams["n_layer"])})
    assert seen == [f"blocks.{i}.hook_mlp_out" for i in range(hparams["n_layer"])]
    np.testing.assert_array_equal(in_place, returned)
    undone = lens.run_with_hooks(IDS, params, n_head, [("blocks.0.hook_mlp_out", halve), ("blocks.0.hook_mlp_out", double)])
    np.testing.assert_array_equal(undone, lens.run_with_hooks(IDS, params, n_head, {}))  # halved, doubled: exact


@pytest.mark.parametrize(
    "hook, message",
    [(lambda z, name: z[:, :1], "the hook on blocks.0.attn.hook_z returned shape [9, 1, {d}] float32, but blocks.0.attn.hook_z has shape [9, {h}, {d}] float32"),
     (lambda z, name: z.astype(np.float64), "returned shape [9, {h}, {d}] float64, but blocks.0.attn.hook_z has shape [9, {h}, {d}] float32"),
     (lambda z, name: z.tolist(), "the hook on blocks.0.attn.hook_z returned a list, but"),
     (lambda z, name: torch.from_numpy(z), "returned a Tensor")],
)
def test_a_hook_returning_the_wrong_shape_or_dtype_is_named(model, hook, message):
    hparams, params, _ = model
    h, d = hparams["n_head"], hparams["n_embd"] // hparams["n_head"]
    with pytest.raises(ValueError) as e:
        lens.run_with_hooks(IDS, params, hparams["n_head"], {"blocks.0.attn.hook_z": hook})
    assert message.format(h=h, d=d) in str(e.value)


@pytest.mark.parametrize(
    "names, hooks, message",
    [(["blocks.0.attn.hook_patern"], None, "no hook point 'blocks.0.attn.hook_patern' in this model (blocks 0 to 1): did you mean blocks.0.attn.hook_pattern"),
     (None, {"blocks.7.hook_resid_pre": lambda x, n: x}, "no hook point 'blocks.7.hook_resid_pre' in this model (blocks 0 to 1)"),
     (None, {"resid_post": lambda x, n: x}, "did you mean blocks.0.hook_resid_post, blocks.1.hook_resid_post?"),
     (["blocks.0.hook_pattern"], None, "did you mean blocks.0.attn.hook_pattern"),
     (None, {"unembed": lambda x, n: x}, "lens.hook_names(2) lists all 38"),
     (None, {"hook_embed": "not a function"}, "hooks must be {name: fn} or [(name, fn), ...]"),
     (5, None, "names must be None (all), a list of hook names or a function name -> bool, got 5"),
     (None, lambda x, n: x, "hooks must be {name: fn} or [(name, fn), ...], got a function")],
)
def test_unknown_names_list_the_close_ones(checkpoints, names, hooks, message):
    _, _, hparams, params = checkpoints["tiny"]
    with pytest.raises(ValueError) as e:
        lens.run_with_cache(IDS, params, hparams["n_head"], names=names, hooks=hooks)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "ids, message",
    [([[1, 2, 3], [4, 5]], "a batch of lists of one length (nothing is padded here)"),
     ([464] * 129, "the text is 129 tokens, beyond the model's context of 128 (n_ctx): this reads one window"),
     ([], "non-empty list of token ids"), ([464, 50257], "token ids must be in [0, 50257)")],
)
def test_bad_inputs(checkpoints, ids, message):
    _, _, hparams, params = checkpoints["tiny"]
    with pytest.raises(ValueError) as e:
        lens.run_with_cache(ids, params, hparams["n_head"])
    assert message in str(e.value)


def float64(logits):
    """Log-probabilities in float64, for references to the float32 figures."""
    logits = logits.astype(np.float64)
    return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)


def check_rank(rank, logits, targets):
    """rank - 1 is the number of tokens more likely than the target, give or take tokens within rounding of it."""
    picked = logits[np.arange(len(targets)), targets][:, None]
    assert np.all(rank - 1 >= (logits > picked + 1e-4).sum(-1)) and np.all(rank - 1 <= (logits > picked - 1e-4).sum(-1))


@pytest.mark.parametrize("sublayers", [False, True])
def test_logit_lens_against_the_logits(model, sublayers):
    hparams, params, _ = model
    n_head, n_layer = hparams["n_head"], hparams["n_layer"]
    result = lens.logit_lens(IDS, params, n_head, sublayers=sublayers)
    assert len(result.names) == (2 * n_layer + 1 if sublayers else n_layer + 1)
    assert result.names[-1] == f"blocks.{n_layer - 1}.hook_resid_post" and result.top.shape == (len(result.names), len(IDS))
    final = gpt2.gpt2(IDS, **params, n_head=n_head)
    np.testing.assert_array_equal(result.predicted, final.argmax(-1))
    np.testing.assert_array_equal(result.top[-1], result.predicted)  # the last layer is the model's own prediction
    np.testing.assert_array_equal(result.rank[-1], 1)
    np.testing.assert_allclose(result.prob[-1], np.exp(float64(final)).max(-1), rtol=1e-4)
    np.testing.assert_allclose(result.kl[-1], 0, atol=1e-4)
    _, cache = lens.run_with_cache(IDS, params, n_head)
    for r, name in enumerate(result.names):  # every row, from the cached stream, in float64
        logits = norm(cache[name], **params["ln_f"]) @ params["wte"].T.astype(np.float64)
        logprobs, final_logprobs = float64(logits), float64(final)
        np.testing.assert_array_equal(result.top[r], logits.argmax(-1), err_msg=name)
        np.testing.assert_allclose(result.top_prob[r], np.exp(logprobs.max(-1)), rtol=1e-3, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(result.prob[r], np.exp(logprobs[np.arange(len(IDS)), result.predicted]), rtol=1e-3, atol=1e-6)
        check_rank(result.rank[r], logits, result.predicted)
        kl = (np.exp(final_logprobs) * (final_logprobs - logprobs)).sum(-1)
        np.testing.assert_allclose(result.kl[r], kl, rtol=1e-3, atol=1e-3, err_msg=name)
    assert result.rank[0].max() > 1, "the embeddings should not already predict what the model does"
    assert all(a.dtype == np.float32 for a in (result.top_prob, result.prob, result.kl))


@pytest.mark.parametrize("prepend_eot", [False, True])
def test_token_view_against_the_logits(model, prepend_eot):
    hparams, params, _ = model
    k = 7
    view = lens.token_view(IDS, params, hparams["n_head"], k=k, prepend_eot=prepend_eot)
    tokens = [gpt2.EOT] * prepend_eot + IDS
    logits = gpt2.gpt2(tokens, **params, n_head=hparams["n_head"])[:-1].astype(np.float64)
    targets = np.array(tokens[1:])
    assert list(view.ids) == IDS[1 - prepend_eot :]  # after <|endoftext|>, the first token is scored too
    logprobs = float64(logits)
    np.testing.assert_allclose(view.prob, np.exp(logprobs[np.arange(len(targets)), targets]), rtol=1e-3, atol=1e-7)
    check_rank(view.rank, logits, targets)
    np.testing.assert_array_equal(view.top_ids, np.argsort(-logits, axis=-1, kind="stable")[:, :k])
    np.testing.assert_allclose(view.top_probs, np.sort(np.exp(logprobs), axis=-1)[:, ::-1][:, :k], rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(view.entropy, -(np.exp(logprobs) * logprobs).sum(-1), rtol=1e-3, atol=1e-4)
    assert all(a.dtype == np.float32 for a in (view.prob, view.top_probs, view.entropy))
    assert len(set(view.rank.tolist())) > 1


@pytest.mark.parametrize(
    "ids, options, message",
    [([464], {}, "a text of one token has nothing to score"), ([], {"prepend_eot": True}, "the text is empty"),
     ([[464, 3290]], {}, "give one text as a list of token ids"), ([1.0, 2.0], {}, "give one text"),
     ([464, 3290], {"k": 0}, "k, the alternatives to show, must be a whole number from 1 to 50257, got 0"),
     ([464] * 128, {"prepend_eot": True}, "the text is 129 tokens, beyond the model's context of 128")],
)
def test_token_view_rejects_bad_requests(checkpoints, ids, options, message):
    _, _, hparams, params = checkpoints["tiny"]
    with pytest.raises(ValueError) as e:
        lens.token_view(ids, params, hparams["n_head"], **options)
    assert message in str(e.value)
    assert lens.token_view([464], params, hparams["n_head"], prepend_eot=True).ids.tolist() == [464]
