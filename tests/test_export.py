"""Export to Hugging Face transformers and GGUF, and GPT-2's HF weights read back in (mini_nanochat/export.py).

An optional extra: skipped without transformers / tokenizers / gguf (`pip install -e '.[export]'`)."""
from __future__ import annotations

import json
import random

import pytest
import torch

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from mini_nanochat import export as ex  # noqa: E402
from mini_nanochat.common import UserError  # noqa: E402
from mini_nanochat.gpt import GPT, GPTConfig, apply_rope, rope_tables  # noqa: E402
from mini_nanochat.tokenizer import Tokenizer  # noqa: E402

TRICKY = [
    "Hello world, it's 2024!", "I'LL tell you: DON'T; we've, they're, he'd", "  multiple   spaces  ",
    "\n\n\ttabs\tand\r\nwindows\r\nlines\n", "trailing spaces   \n  next", "12345678901 3.14159 -42 1,000,000",
    "naïve café déjà vu", "日本語のテキスト、そして中文。", "emoji 😀👍🏽 flags 🇺🇸 zwj 👩‍👩‍👧", "e\u0301 combining ü̈",
    "\u00a0nbsp\u2009thin\u3000ideographic", "a\x00b\x7fc\x1b[31m", "١٢٣ arabic digits ๑๒ thai", "Ⅻ roman ½ fraction",
    "<|bos|>special<|user_start|>tokens<|assistant_end|> in text", "<|not_special|> <|bos", "x" * 300, "", " ", "\n",
    "'s 's 'S", "don't!!!...???", "$100.00 €5 £3", "tab\t\t\tcolumns", "mixedCASEWords and_snake_case",
    "http://example.com/path?q=1&r=2", "def f(x):\n    return x ** 2\n",
]


@pytest.fixture(scope="module")
def tok(train_docs):
    """A small BPE (1000 ids) trained on the embedded corpus: enough merges for multi-byte tokens."""
    return Tokenizer.train(train_docs[:300], 1000, backend="fast")


def _fuzz_strings(n=200, seed=0):
    rng = random.Random(seed)
    alphabet = list("ab Z\n\t\r019'.,!?-_éü日😀 ") + ["<|bos|>", "'ll", "  ", "123"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def _model(tok, preset: str, seed: int = 0, **overrides) -> GPT:
    """A tiny model with every weight randomised (the init zeroes the output projections, which would
    hide a wrong mapping of them)."""
    torch.manual_seed(seed)
    cfg = GPTConfig.from_depth(2, vocab_size=tok.vocab_size, sequence_len=64, preset=preset, aspect_ratio=32,
                               head_dim=16, **overrides)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


# ---- the tokenizer -------------------------------------------------------------------------------


def test_bpe_merges_rebuild_tiktoken_ids(tok):
    """The merge list replays tiktoken: a merge-list BPE gives the same ids as the ranks."""
    from tokenizers import Tokenizer as HFTokenizer

    body = json.loads(ex.hf_tokenizer(tok).to_str())
    body["added_tokens"] = []  # plain text only, as tok.encode
    plain = HFTokenizer.from_str(json.dumps(body))
    for s in TRICKY + _fuzz_strings():
        assert plain.encode(s, add_special_tokens=False).ids == tok.encode(s), repr(s)


def test_autotokenizer_round_trip(tok, tmp_path):
    """AutoTokenizer on the saved files: ids equal ours (specials as text with split_special_tokens, as
    special ids otherwise, like tiktoken's allowed_special="all"), <|bos|> prepended, text decoded back."""
    from transformers import AutoTokenizer

    ex.save_hf_tokenizer(tok, tmp_path, model_max_length=64, chat=True)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.bos_token_id == tok.bos_id and hf.eos_token == "<|assistant_end|>" and len(hf) == tok.vocab_size
    for s in TRICKY + _fuzz_strings(seed=1):
        assert hf(s, add_special_tokens=False, split_special_tokens=True)["input_ids"] == tok.encode(s), repr(s)
        assert hf(s)["input_ids"] == [tok.bos_id] + tok.enc.encode(s, allowed_special="all"), repr(s)
        assert hf.decode(tok.encode(s)) == s
    # the chat template renders what our chat format renders
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    ids = hf.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == tok.render_for_completion(conv)


# ---- Hugging Face models ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset,cls", [("llama", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel")])
def test_hf_export_logits_and_greedy_match(tok, tmp_path, preset, cls):
    from transformers import AutoModelForCausalLM

    from mini_nanochat.engine import Engine

    model = _model(tok, preset)
    assert model.config.padded_vocab_size > model.config.vocab_size  # 1000 -> 1024: padding rows are dropped
    if preset == "llama":
        assert model.config.n_kv_head < model.config.n_head  # GQA is mapped too
    ex.export_hf(model, tok, tmp_path)
    hf, info = AutoModelForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
    hf = hf.float().eval()
    assert type(hf).__name__ == cls
    assert not info["missing_keys"] and not info["unexpected_keys"]
    rows = [tok.encode(s, prepend="bos") for s in
            ["The Congress shall make no law respecting an establishment of religion, or prohibiting",
             "We the People of the United States, in Order to form a more perfect Union, establish"]]
    ids = torch.tensor([r[:min(map(len, rows))] for r in rows])
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert theirs.shape == ours.shape == (2, ids.size(1), tok.vocab_size)
    assert (ours - theirs).abs().max().item() < 1e-4
    # greedy decoding: our engine (KV cache) and transformers' generate, token for token
    prompt = tok.encode("The President shall", prepend="bos")
    ours_out = Engine(model, tok).generate_batch(prompt, max_tokens=24, temperature=0.0)[0][0]
    theirs_out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24)[0].tolist()
    stops = {tok.bos_id, tok.encode_special("assistant_end")}
    theirs_out = theirs_out[:next((i for i in range(len(prompt), len(theirs_out)) if theirs_out[i] in stops),
                                  len(theirs_out))]  # our engine drops the stop token
    assert tok.encode_special("python_start") not in ours_out[len(prompt):]  # no calculator call in the way
    assert len(ours_out) > len(prompt) + 5 and ours_out == theirs_out


def test_hf_export_tied_llama(tok, tmp_path):
    """tie_embeddings on the llama preset maps to tie_word_embeddings."""
    from transformers import AutoModelForCausalLM

    model = _model(tok, "llama", tie_embeddings=True)
    ex.export_hf(model, tok, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path)).float().eval()
    ids = torch.tensor([tok.encode("Tied weights", prepend="bos")])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("preset,overrides,field", [
    ("modern", {}, "qk_norm=True"),
    ("modern", {}, "logit_softcap=15.0"),
    ("modern", {}, "window_pattern=SSSL"),
    ("llama", {"window_pattern": "SL"}, "window_pattern=SL"),
    ("llama", {"logit_softcap": 30.0}, "logit_softcap=30.0"),
    ("llama", {"qk_norm": True}, "qk_norm=True"),
    ("llama", {"embed_norm": True}, "embed_norm=True"),
    ("gpt2", {"n_kv_head": 1}, "n_kv_head=1"),
])
def test_refuses_what_no_standard_class_computes(tok, tmp_path, preset, overrides, field):
    model = _model(tok, preset, **overrides)
    with pytest.raises(UserError, match="cannot export") as e:
        ex.export_hf(model, tok, tmp_path / "x")
    assert field in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()
    if preset == "modern":
        assert "--preset llama" in str(e.value)


# ---- GGUF ------------------------------------------------------------------------------------------


def test_rope_interleave_keeps_attention_scores():
    """q.k with our rotate-half RoPE == q.k with llama.cpp's adjacent-pair RoPE on the permuted rows."""
    torch.manual_seed(0)
    H, D, C, T = 2, 8, 16, 5
    wq, wk, x = torch.randn(H * D, C), torch.randn(H * D, C), torch.randn(T, C)
    cos, sin = rope_tables(T, D, 10000.0)

    def heads(w, xx):  # (H, T, D)
        return (xx @ w.t()).view(T, H, D).transpose(0, 1)

    def rope_adjacent(v):  # pairs (2i, 2i+1) rotated by angle i
        a, b = v[..., 0::2], v[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    ours = apply_rope(heads(wq, x), cos, sin) @ apply_rope(heads(wk, x), cos, sin).transpose(-1, -2)
    theirs = rope_adjacent(heads(ex.rope_interleave(wq, H), x)) @ \
        rope_adjacent(heads(ex.rope_interleave(wk, H), x)).transpose(-1, -2)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, rope_adjacent(heads(wq, x)) @ rope_adjacent(heads(wk, x)).transpose(-1, -2),
                              atol=1e-3)  # without the permutation the scores change


@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_gguf_reads_back(tok, tmp_path, preset):
    gguf = pytest.importorskip("gguf")
    model = _model(tok, preset)
    cfg = model.config
    path = ex.export_gguf(model, tok, tmp_path / "m.gguf", name="t")
    meta, tensors = ex.read_gguf(path)
    assert meta["general.architecture"] == preset and meta["general.name"] == "t"
    assert meta[f"{preset}.block_count"] == cfg.n_layer and meta[f"{preset}.context_length"] == cfg.sequence_len
    assert meta[f"{preset}.embedding_length"] == cfg.n_embd and meta[f"{preset}.attention.head_count"] == cfg.n_head
    assert meta[f"{preset}.feed_forward_length"] == cfg.mlp_hidden
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.bos_token_id"] == tok.bos_id
    assert meta["mini_nanochat.split_pattern"] == tok.pattern
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if preset == "llama":
        assert meta["llama.attention.head_count_kv"] == cfg.n_kv_head
        assert meta["llama.rope.freq_base"] == cfg.rope_base
        assert meta["llama.rope.dimension_count"] == cfg.head_dim
        assert abs(meta["llama.attention.layer_norm_rms_epsilon"] - 1e-6) < 1e-12
        kv, F = cfg.n_kv_head * cfg.head_dim, cfg.mlp_hidden
        expected = {"token_embd.weight": (V, C), "output_norm.weight": (C,), "output.weight": (V, C)}
        for i in range(L):
            expected |= {f"blk.{i}.attn_norm.weight": (C,), f"blk.{i}.ffn_norm.weight": (C,),
                         f"blk.{i}.attn_q.weight": (C, C), f"blk.{i}.attn_k.weight": (kv, C),
                         f"blk.{i}.attn_v.weight": (kv, C), f"blk.{i}.attn_output.weight": (C, C),
                         f"blk.{i}.ffn_gate.weight": (F, C), f"blk.{i}.ffn_up.weight": (F, C),
                         f"blk.{i}.ffn_down.weight": (C, F)}
        assert torch.equal(tensors["blk.1.attn_q.weight"], ex.rope_interleave(sd["blocks.1.attn.c_q.weight"], cfg.n_head))
        assert torch.equal(tensors["blk.1.attn_k.weight"], ex.rope_interleave(sd["blocks.1.attn.c_k.weight"], cfg.n_kv_head))
        assert torch.equal(tensors["blk.0.ffn_gate.weight"], sd["blocks.0.mlp.c_gate.weight"])
        assert torch.equal(tensors["output.weight"], sd["lm_head.weight"][:V])
    else:
        assert abs(meta["gpt2.attention.layer_norm_epsilon"] - 1e-5) < 1e-10
        expected = {"token_embd.weight": (V, C), "position_embd.weight": (cfg.sequence_len, C),
                    "output_norm.weight": (C,), "output_norm.bias": (C,), "output.weight": (V, C)}
        for i in range(L):
            for part, shapes in (("weight", {"attn_qkv": (3 * C, C), "attn_output": (C, C), "ffn_up": (4 * C, C),
                                             "ffn_down": (C, 4 * C), "attn_norm": (C,), "ffn_norm": (C,)}),
                                 ("bias", {"attn_qkv": (3 * C,), "attn_output": (C,), "ffn_up": (4 * C,),
                                           "ffn_down": (C,), "attn_norm": (C,), "ffn_norm": (C,)})):
                expected |= {f"blk.{i}.{n}.{part}": s for n, s in shapes.items()}
        assert torch.equal(tensors["blk.0.attn_qkv.weight"][C:2 * C], sd["blocks.0.attn.c_k.weight"])
        assert torch.equal(tensors["output.weight"], sd["wte.weight"][:V])
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    assert torch.equal(tensors["token_embd.weight"], sd["wte.weight"][:V])
    # the vocabulary: every id's token, the specials as CONTROL, a merge per learned token
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["tokenizer.ggml.tokens"]
    pieces = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    assert len(pieces) == V and pieces[tok.bos_id] == "<|bos|>"
    b2u = ex.bytes_to_unicode()
    assert pieces[tok.encode("The")[0]] == "".join(b2u[b] for b in tok.token_pieces(tok.encode("The"))[0])
    types = reader.fields["tokenizer.ggml.token_type"]
    assert [int(types.parts[i][0]) for i in types.data][tok.bos_id] == int(gguf.TokenType.CONTROL)
    assert len(reader.fields["tokenizer.ggml.merges"].data) == len(tok.mergeable_ranks) - 256


# ---- GPT-2's weights, read in --------------------------------------------------------------------


@pytest.mark.parametrize("strip_prefix", [False, True])
def test_load_hf_gpt2_matches_transformers(tmp_path, strip_prefix):
    """A randomly initialised GPT-2 saved by transformers loads into our gpt2 preset with equal logits
    (with the 'transformer.' prefix of GPT2LMHeadModel, and without it, as the Hub's gpt2 files are)."""
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hc = GPT2Config(vocab_size=301, n_positions=32, n_embd=48, n_layer=2, n_head=3)  # GPT-2's own activation, gelu_new
    hf = GPT2LMHeadModel(hc).eval()
    hf.save_pretrained(str(tmp_path))
    if strip_prefix:
        sd = load_file(str(tmp_path / "model.safetensors"))
        save_file({k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"},
                  str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = ex.load_hf_gpt2(tmp_path)
    assert model.config.preset == "gpt2" and model.config.padded_vocab_size == 320
    ids = torch.randint(0, 301, (2, 32))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_load_hf_gpt2_refuses_other_models(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="not 'gpt2'"):
        ex.load_hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="pickle"):
        ex.load_hf_gpt2(tmp_path)


# ---- the stage -------------------------------------------------------------------------------------


def _run(base_dir, tok, preset, name, **overrides):
    """A run directory with one checkpoint of a tiny model, its tokenizer saved under the base dir."""
    from mini_nanochat.checkpoint import save_checkpoint
    from mini_nanochat.tokenizer import tokenizer_dir

    tok.save(tokenizer_dir("export-test"))
    model = _model(tok, preset, **overrides)
    run = base_dir / "runs" / name
    save_checkpoint(run, 5, model, None, meta={"model_config": model.config.to_dict(), "tokenizer": "export-test",
                                               "tokenizer_sha256": tok.sha256()})
    return run


def test_stage_export_hf_and_gguf(base_dir, tok, capsys):
    from mini_nanochat.stages import export as stage

    _run(base_dir, tok, "llama", "exp-llama")
    r = stage.main(["--model-tag", "exp-llama", "--stage", "base"])
    out = base_dir / "exports" / "exp-llama-hf"
    assert r["out"] == str(out) and r["max_logit_diff"] <= 1e-4
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", ex.MARKER} <= names
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert "max |difference|" in capsys.readouterr().out
    with pytest.raises(UserError, match="--force"):  # never overwrites silently
        stage.main(["--model-tag", "exp-llama", "--stage", "base"])
    stage.main(["--model-tag", "exp-llama", "--stage", "base", "--force", "--no-verify"])
    r = stage.main(["--model-tag", "exp-llama", "--format", "gguf"])
    assert (base_dir / "exports" / "exp-llama-gguf" / "model.gguf").is_file() and r["tensors"] == 2 + 2 * 9 + 1
    assert not [p for p in (base_dir / "exports").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_stage_refuses_modern_and_foreign_folders(base_dir, tok, tmp_path):
    from mini_nanochat.__main__ import main as cli
    from mini_nanochat.stages import export as stage

    _run(base_dir, tok, "modern", "exp-modern")
    with pytest.raises(UserError, match="modern preset.*--preset llama"):
        stage.main(["--model-tag", "exp-modern"])
    assert not (base_dir / "exports" / "exp-modern-hf").exists()
    assert cli(["export", "--model-tag", "exp-modern"]) == 2  # one line, exit code 2
    _run(base_dir, tok, "gpt2", "exp-gpt2")
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an export"):
        stage.main(["--model-tag", "exp-gpt2", "--out", str(mine), "--force"])
    assert (mine / "precious.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="no checkpoint"):
        stage.main(["--model-tag", "exp-nothing"])
