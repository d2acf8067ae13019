"""danlu's GPT against Hugging Face's GPT2LMHeadModel on tiny random checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'danlu[hf]')")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from danlu.errors import DanluError  # noqa: E402
from danlu.lm import cpu  # noqa: E402
from danlu.lm.complete import complete  # noqa: E402
from danlu.lm.cpu import kernels as cpu_kernels  # noqa: E402
from danlu.lm.generate import generate_tokens, stream_tokens  # noqa: E402
from danlu.lm.hf import export_hf, from_hf  # noqa: E402
from danlu.lm.load import LoadedLM  # noqa: E402
from danlu.lm.model import GPT, GPTConfig, KVCache  # noqa: E402
from danlu.lm.options import GenerationOptions  # noqa: E402
from danlu.lm.tokenizer import TextTokenizer  # noqa: E402

VOCAB = 211
EOS = VOCAB - 1
PAD = 0


def tiny_hf(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        # wider weights than GPT-2's 0.02 give peaked logits, so greedy choices are not
        # decided by float rounding
        initializer_range=0.2,
    )
    kwargs.update(overrides)
    return GPT2LMHeadModel(GPT2Config(**kwargs)).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny tensors gain nothing from a second thread, and on a busy machine every op that
    # waits for one can cost milliseconds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(one_thread, tmp_path_factory):
    hf = tiny_hf()
    path = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(path, safe_serialization=True)
    return hf, from_hf(path).eval(), path


def hf_new_tokens(hf, prompts, eos=None, **kwargs) -> list[list[int]]:
    """HF generate on left-padded prompts; the new tokens of each row up to its EOS."""
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(ids, attention_mask=mask, pad_token_id=PAD, eos_token_id=eos, do_sample=False, **kwargs)
    rows = []
    for row in out[:, P:].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        rows.append(row)
    return rows


PROMPTS = [[5, 17, 42, 8, 99, 3, 150], [7, 7, 1], [33, 64, 12, 190, 2]]


# ---------------------------------------------------------------------------- forward


def test_logits_match_hf(checkpoint):
    hf, model, _ = checkpoint
    ids = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=0)

        mask = torch.ones_like(ids)
        mask[0, :5] = 0
        mask[2, :1] = 0
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ours = model(ids, attention_mask=mask)
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=0)


def test_kv_cache_steps_match_full_forward(checkpoint):
    _, model, _ = checkpoint
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, 2, 10)
        parts = [model(ids[:, :6], kv_cache=cache)]
        parts += [model(ids[:, t : t + 1], kv_cache=cache) for t in range(6, 8)]
        parts.append(model(ids[:, 8:], kv_cache=cache))  # several tokens after a cache
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


@pytest.fixture(params=["danlu kernel", "torch only"])
def kernels(request, monkeypatch):
    """Both paths of `FastLinear`: danlu's CPU kernel where it builds, and torch alone."""
    if request.param == "torch only":
        monkeypatch.setattr(cpu_kernels, "_load", lambda: None)
    elif not cpu_kernels.available():
        pytest.skip("danlu's CPU kernel could not be built here")
    return request.param


def test_weight_layouts_give_the_same_logits(checkpoint, kernels):
    _, model, _ = checkpoint
    ids = torch.randint(0, VOCAB, (4, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        row_major = cpu.accelerate(model, batch_size=4)(ids)
        assert model.lm_head.weight.is_contiguous()
        batch_one = cpu.accelerate(model, batch_size=1)(ids)
        # the kernel reads row-major weights; MKL's matrix-vector product prefers column-major
        assert model.lm_head.weight.is_contiguous() == (kernels == "danlu kernel")
        torch.testing.assert_close(batch_one, row_major, atol=1e-5, rtol=0)
        cpu.accelerate(model, batch_size=4)

        layer = model.transformer.h[0].mlp.c_fc
        layer.weight.data = layer.weight.data.contiguous()
        for rows in (1, 2, 64, 65):  # both sides of the small-batch path
            x = torch.randn(rows, 32)
            expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
            torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_decoding_layout_moves_weights_once_and_keeps_their_values(checkpoint):
    _, model, _ = checkpoint
    fresh = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = fresh(ids)
        cpu.accelerate(fresh, batch_size=1)
        ptrs = [p.data_ptr() for p in fresh.parameters()]
        cpu.accelerate(fresh, batch_size=1)
        assert [p.data_ptr() for p in fresh.parameters()] == ptrs  # placed once, not per call
        for n, p in fresh.named_parameters():
            assert torch.equal(p, before[n]), n
        assert fresh.lm_head.weight is fresh.transformer.wte.weight
        torch.testing.assert_close(fresh(ids), expected, atol=1e-5, rtol=0)
        if cpu_kernels.available() and cpu_kernels.huge_page_copies([torch.zeros(1)]) is not None:
            # the streamed matrices start on 2 MB boundaries of one mapping
            assert fresh.transformer.h[0].attn.c_attn.weight.data_ptr() % (2 << 20) == 0


def test_huge_page_copies_are_equal_and_aligned():
    tensors = [torch.randn(3, 5), torch.randn(7).bfloat16(), torch.arange(10)]
    copies = cpu_kernels.huge_page_copies(tensors)
    if copies is None:
        pytest.skip("this platform has no madvise(MADV_HUGEPAGE)")
    for t, c in zip(tensors, copies, strict=True):
        assert torch.equal(t, c) and c.dtype == t.dtype and c.data_ptr() % 64 == 0
    assert copies[0].data_ptr() % (2 << 20) == 0
    del tensors
    assert copies[2].sum().item() == 45  # the mapping lives as long as its tensors


def test_training_forward_backward():
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))
    ids = torch.randint(0, 50, (2, 16))
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].flatten())
    loss.backward()
    assert model.transformer.wte.weight.grad is not None
    assert model.lm_head.weight is model.transformer.wte.weight
    n = model.num_params()
    assert n == sum(p.numel() for p in model.parameters()) - 16 * 16


@pytest.mark.parametrize("seq_len", [64, 32])
def test_flops_per_token_matches_the_counted_flops_of_a_training_step(seq_len):
    # every matmul of a forward and backward pass, counted by torch (the math attention kernel,
    # whose matmuls the counter sees); the estimate leaves out only the few FLOPs of biases and
    # layer norms it counts as weights (about 1.4% here)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=64))
    ids = torch.randint(0, 256, (2, seq_len))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(ids)
        torch.nn.functional.cross_entropy(logits.reshape(-1, 256), ids.flatten()).backward()
    assert "aten.bmm" in {str(op) for op in counter.get_flop_counts()["Global"]}  # attention counted
    estimate = model.flops_per_token(seq_len if seq_len != 64 else None) * ids.numel()
    assert 0.98 < counter.get_total_flops() / estimate < 1.0


# ---------------------------------------------------------------------------- generation


def test_greedy_matches_hf_batch1(checkpoint, kernels):
    hf, model, _ = checkpoint
    prompt = [PROMPTS[0]]
    opts = GenerationOptions(max_new_tokens=20)
    assert generate_tokens(model, prompt, opts) == hf_new_tokens(hf, prompt, max_new_tokens=20)


def test_greedy_matches_hf_left_padded_batch(checkpoint, kernels):
    hf, model, _ = checkpoint
    expected = hf_new_tokens(hf, PROMPTS, max_new_tokens=16)
    opts = GenerationOptions(max_new_tokens=16)
    assert generate_tokens(model, PROMPTS, opts, pad_token_id=PAD) == expected

    # stop at a token one row really produces, so EOS handling is compared too
    eos = expected[1][4]
    expected = hf_new_tokens(hf, PROMPTS, eos=eos, max_new_tokens=16)
    assert any(len(row) < 16 for row in expected)
    opts = GenerationOptions(max_new_tokens=16, eos_token_id=eos)
    assert generate_tokens(model, PROMPTS, opts, pad_token_id=PAD) == expected


def test_repetition_penalty_matches_hf(checkpoint):
    hf, model, _ = checkpoint
    expected = hf_new_tokens(hf, PROMPTS, max_new_tokens=12, repetition_penalty=1.5)
    opts = GenerationOptions(max_new_tokens=12, repetition_penalty=1.5)
    assert generate_tokens(model, PROMPTS, opts, pad_token_id=PAD) == expected


def test_beam_search_matches_hf(checkpoint):
    hf, model, _ = checkpoint
    prompt = [PROMPTS[0]]
    expected = hf_new_tokens(hf, prompt, max_new_tokens=12, num_beams=3)
    assert generate_tokens(model, prompt, GenerationOptions(max_new_tokens=12, num_beams=3)) == (expected)

    # with an EOS some hypotheses finish early and compete through the length penalty
    eos = expected[0][3]
    expected = hf_new_tokens(hf, prompt, eos=eos, max_new_tokens=12, num_beams=3, num_return_sequences=2)
    opts = GenerationOptions(max_new_tokens=12, num_beams=3, num_return_sequences=2, eos_token_id=eos)
    assert generate_tokens(model, prompt, opts) == expected


def test_sampling_is_reproducible_and_top_k_1_is_greedy(checkpoint):
    _, model, _ = checkpoint
    sample = GenerationOptions(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=123)
    first = generate_tokens(model, PROMPTS, sample)
    assert generate_tokens(model, PROMPTS, sample) == first
    other = GenerationOptions(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=124)
    assert generate_tokens(model, PROMPTS, other) != first

    greedy = generate_tokens(model, PROMPTS, GenerationOptions(max_new_tokens=12))
    top1 = GenerationOptions(max_new_tokens=12, temperature=0.7, top_k=1, seed=5)
    assert generate_tokens(model, PROMPTS, top1) == greedy


def test_sampling_matches_hf_with_the_same_seed(checkpoint):
    hf, model, _ = checkpoint
    prompt = [PROMPTS[2]]
    torch.manual_seed(7)
    out = hf.generate(
        torch.tensor(prompt),
        attention_mask=torch.ones(1, len(prompt[0]), dtype=torch.long),
        do_sample=True,
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        min_p=0.01,
        max_new_tokens=10,
        pad_token_id=PAD,
        eos_token_id=None,
    )
    opts = GenerationOptions(max_new_tokens=10, temperature=0.8, top_k=50, top_p=0.95, min_p=0.01, seed=7)
    assert generate_tokens(model, prompt, opts) == out[:, len(prompt[0]) :].tolist()


def test_generation_past_the_context_slides_like_nanogpt(checkpoint):
    # 80 new tokens from a 64-position model: once the context is full every token is
    # predicted from the last 64 tokens, as nanoGPT's sample.py crops them; left-padded
    # rows match each prompt generated alone
    _, model, _ = checkpoint
    block = model.config.block_size
    ours = generate_tokens(model, PROMPTS, GenerationOptions(max_new_tokens=80))
    for prompt, got in zip(PROMPTS, ours, strict=True):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(80):
                seq.append(int(model(torch.tensor([seq[-block:]]))[0, -1].argmax()))
        assert got == seq[len(prompt) :]


def test_stream_yields_the_same_tokens(checkpoint):
    _, model, _ = checkpoint
    opts = GenerationOptions(max_new_tokens=10, eos_token_id=EOS)
    expected = generate_tokens(model, PROMPTS, opts, pad_token_id=PAD)
    rows: list[list[int]] = [[] for _ in PROMPTS]
    for step in stream_tokens(model, PROMPTS, opts, pad_token_id=PAD):
        for row, token in zip(rows, step, strict=True):
            if token is not None:
                row.append(token)
    assert rows == expected


def test_stop_strings_end_a_sequence(checkpoint):
    _, model, _ = checkpoint
    greedy = generate_tokens(model, [PROMPTS[0]], GenerationOptions(max_new_tokens=10))[0]

    def decode(tokens: list[int]) -> str:
        return "".join(f"<{t}>" for t in tokens)

    opts = GenerationOptions(max_new_tokens=10, stop=[f"<{greedy[4]}>"])
    stopped = generate_tokens(model, [PROMPTS[0]], opts, decode=decode)[0]
    assert stopped == greedy[: greedy.index(greedy[4]) + 1]


def test_complete_with_a_tokenizer(checkpoint):
    # text in, text out (danlu.lm.complete) over danlu's engine with a tokenizers.Tokenizer
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    _, model, _ = checkpoint
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    lm = LoadedLM(model, TextTokenizer(tokenizer, "file"), "hf-gpt2", model.config.block_size)
    prompts = ["w5 w17 w42", "w7"]
    ids = [tokenizer.encode(p).ids for p in prompts]
    tokens = generate_tokens(model, ids, GenerationOptions(max_new_tokens=6))
    texts = [c.text for c in complete(lm, prompts, GenerationOptions(max_new_tokens=6))]
    assert texts == [tokenizer.decode(t) for t in tokens]

    stop = f"w{tokens[0][2]}"
    opts = GenerationOptions(max_new_tokens=6, stop=[stop])
    cut = complete(lm, prompts[:1], opts)[0].text
    assert stop not in cut and texts[0].startswith(cut)


def test_bfloat16_generation_keeps_the_callers_model(checkpoint):
    _, model, _ = checkpoint
    opts = GenerationOptions(max_new_tokens=8, dtype="bfloat16")
    tokens = generate_tokens(model, PROMPTS, opts)
    assert [len(t) for t in tokens] == [8, 8, 8]
    assert next(model.parameters()).dtype == torch.float32


def test_bfloat16_on_cpu_rounds_only_the_weight_matrices(checkpoint, kernels):
    _, model, _ = checkpoint
    mixed = cpu.cast(copy.deepcopy(model), torch.bfloat16)
    assert mixed.lm_head.weight.dtype == torch.bfloat16
    assert mixed.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    assert mixed.transformer.h[0].attn.c_attn.bias.dtype == torch.float32
    assert mixed.transformer.ln_f.weight.dtype == mixed.compute_dtype == torch.float32
    # reference: the float32 model whose matrices hold the same bf16-rounded values
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for module in rounded.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(module.weight.bfloat16().float())
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(mixed(ids), rounded(ids), atol=1e-4, rtol=0)
    opts = GenerationOptions(max_new_tokens=12)
    assert generate_tokens(mixed, PROMPTS, opts, pad_token_id=PAD) == generate_tokens(
        rounded, PROMPTS, opts, pad_token_id=PAD
    )


def test_truncate_prompt_keeps_the_latest_tokens(checkpoint):
    _, model, _ = checkpoint
    long = list(range(1, 71))  # the context holds 64
    opts = GenerationOptions(max_new_tokens=8, truncate_prompt=True)
    assert generate_tokens(model, [long], opts) == generate_tokens(
        model, [long[-64:]], GenerationOptions(max_new_tokens=8)
    )
    beams = GenerationOptions(max_new_tokens=8, truncate_prompt=True, num_beams=2)
    assert generate_tokens(model, [long], beams) == generate_tokens(
        model, [long[-56:]], GenerationOptions(max_new_tokens=8, num_beams=2)
    )


# ---------------------------------------------------------------------------- export


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu"])
def test_export_hf_round_trip(tmp_path, activation):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32, activation=activation)
    model = GPT(config).eval()
    out = export_hf(model, tmp_path / "export")
    hf_act = json.loads((out / "config.json").read_text())["activation_function"]
    assert hf_act == {"gelu_tanh": "gelu_new", "gelu": "gelu"}[activation]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=0)
    again = from_hf(out)
    assert again.config.activation == activation
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    with pytest.raises(DanluError, match="overwrite=True"):
        export_hf(model, out)
    export_hf(model, out, overwrite=True)


def test_export_hf_of_a_bias_free_model_is_exact(tmp_path):
    """nanoGPT's bias=False (examples/shakespeare_char.yaml): exported with zero biases, which
    GPT-2's Conv1D and LayerNorm add exactly; read back by danlu as the same function."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False)
    model = GPT(config).eval()
    with torch.no_grad():  # layer norms away from their initial 1, so a lost weight would show
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    out = export_hf(model, tmp_path / "export")
    saved = json.loads((out / "config.json").read_text())
    assert saved["eos_token_id"] is None and saved["bos_token_id"] is None  # no 50256 in 97 tokens
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=0)
        assert all(not b.any() for n, b in hf.named_parameters() if n.endswith(".bias"))
        again = from_hf(out).eval()
        torch.testing.assert_close(again(ids), model(ids), atol=1e-5, rtol=0)


def test_untied_head_round_trip(tmp_path):
    hf = tiny_hf(seed=3, tie_word_embeddings=False)
    hf.save_pretrained(tmp_path / "hf")
    model = from_hf(tmp_path / "hf").eval()
    assert not model.config.tie_embeddings
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- bad input


def test_missing_files_name_the_file(checkpoint, tmp_path):
    _, _, path = checkpoint
    (tmp_path / "no_config").mkdir()
    with pytest.raises(DanluError, match="config.json"):
        from_hf(tmp_path / "no_config")

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(DanluError, match="model.safetensors"):
        from_hf(no_weights)

    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(DanluError, match="model_type 'llama'"):
        from_hf(llama)


def test_pytorch_bin_checkpoint_loads(checkpoint, tmp_path):
    hf, model, path = checkpoint
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = from_hf(tmp_path)
    assert torch.equal(loaded.transformer.h[1].mlp.c_fc.weight, model.transformer.h[1].mlp.c_fc.weight)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=1.0, top_p=0), "top_p must be in"),
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(num_beams=3, temperature=0.7), "conflicts with sampling"),
        (dict(top_k=5), "only apply when sampling"),
        (dict(dtype="float8"), "unknown dtype"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(DanluError, match=message):
        GenerationOptions(**kwargs)


def test_prompt_too_long(checkpoint):
    _, model, _ = checkpoint
    with pytest.raises(DanluError, match=r"prompt 0 has 70 tokens .* at most 64"):
        generate_tokens(model, [list(range(70))], GenerationOptions(max_new_tokens=8))
    # beam search keeps every hypothesis in one context: prompt and new tokens must fit
    with pytest.raises(DanluError, match=r"prompt 0 has 60 tokens .* at most 56"):
        generate_tokens(model, [list(range(60))], GenerationOptions(max_new_tokens=8, num_beams=2))
    with pytest.raises(DanluError, match="outside the vocabulary"):
        generate_tokens(model, [[VOCAB + 5]], GenerationOptions(max_new_tokens=2))
