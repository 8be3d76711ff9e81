"""
Stage `export`: a trained model in the formats other tools read.

    python -m mini_nanochat export --model-tag d4 --stage base          # -> <base>/exports/d4-hf/
    python -m mini_nanochat export --model-tag d4 --format gguf         # -> <base>/exports/d4-gguf/model.gguf
    python -m mini_nanochat export --run-dir path/to/run --out my-folder --force

--format hf writes a Hugging Face folder (config.json, model.safetensors in fp32, tokenizer.json and its
config, generation_config.json) that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer` load,
then loads it back with transformers and checks its logits against ours (max |difference| printed; more
than 1e-4 is an error). --format gguf writes one GGUF file for llama.cpp and reads it back with the
`gguf` package's reader.

Only the presets that are a standard architecture export: gpt2 (GPT2LMHeadModel) and llama
(LlamaForCausalLM). The modern preset (ReLU^2, QK-norm, soft-capped logits, sliding windows, ...) is
refused with the fields that no standard class computes (docs/adrs/0039-export-hf-gguf.md).
Needs `pip install -e '.[export]'` (transformers, tokenizers, gguf).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
from pathlib import Path

from ..common import UserError, get_base_dir, is_plain_name, print_config

CHECK_TEXT = "The Congress shall make no law respecting an establishment of religion, 1789. <|bos|> naïve 日本"
TOLERANCE = 1e-4


def get_parser() -> argparse.ArgumentParser:
    from ..checkpoint import add_run_flags

    p = argparse.ArgumentParser(prog="mini-nanochat export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(p)
    p.add_argument("--format", default="hf", choices=["hf", "gguf"], help="hf: a transformers folder; gguf: llama.cpp")
    p.add_argument("--out", default="", help="output folder (default: <base>/exports/<run>-<format>)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in that folder")
    p.add_argument("--no-verify", action="store_true", help="hf: skip loading the export back with transformers")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    from .. import export as ex
    from ..checkpoint import CheckpointError, latest_checkpoint, load_model, run_from_flags

    if not args.run_dir and not is_plain_name(args.model_tag):
        raise UserError(f"--model-tag {args.model_tag!r:.60} is not a plain name (letters, digits, '.', '_', '-'); "
                        f"use --run-dir for a path")
    run_dir = run_from_flags(args)
    if not (run_dir / "meta.json").is_file() and latest_checkpoint(run_dir) is None:
        raise UserError(f"no checkpoint in {run_dir}; train one first (base-train --preset llama ...)")
    import torch

    try:
        model, tok, meta = load_model(run_dir, "cpu", dtype=torch.float32)
    except CheckpointError as e:
        raise UserError(str(e).splitlines()[0]) from None
    arch = ex.check_exportable(model.config)  # the modern preset stops here, naming its fields
    ck = Path(meta["checkpoint"])
    run_name = (ck.parent.parent if ck.parent.name == "checkpoints" else ck).name
    out = Path(args.out) if args.out else get_base_dir() / "exports" / f"{run_name}-{args.format}"
    if out.exists() and not args.force:
        raise UserError(f"{out} exists (an earlier export?); add --force to replace it, or choose --out")
    chat = meta.get("kind") in ("sft", "rl")
    print_config("export", {"checkpoint": str(ck), "step": meta.get("step"), "preset": model.config.preset,
                            "architecture": {"gpt2": "GPT2LMHeadModel / gguf gpt2",
                                             "llama": "LlamaForCausalLM / gguf llama"}[arch],
                            "format": args.format, "chat model": chat, "output": str(out)})
    provenance = {"run": str(run_dir), "checkpoint": str(ck), "step": meta.get("step"), "preset": model.config.preset,
                  "tokenizer_sha256": tok.sha256(), "git_commit": meta.get("git_commit"),
                  "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    result: dict = {"out": str(out), "architecture": arch, "format": args.format}
    try:
        if args.format == "hf":
            ex.export_hf(model, tok, tmp, chat=chat, provenance=provenance)
            if not args.no_verify:
                ids = tok.encode(CHECK_TEXT, prepend="bos")[:model.config.sequence_len]
                diff = ex.compare_hf_logits(model, tmp, [ids])
                print(f"transformers' logits vs ours on {len(ids)} tokens: max |difference| {diff:.2e}")
                if not diff <= TOLERANCE:  # also catches NaN
                    raise RuntimeError(f"the exported model's logits differ from ours by {diff} > {TOLERANCE}: "
                                       f"a bug in mini_nanochat/export.py (nothing was written to {out})")
                result["max_logit_diff"] = diff
        else:
            gguf_path = ex.export_gguf(model, tok, tmp / "model.gguf", name=run_name, chat=chat)
            gmeta, tensors = ex.read_gguf(gguf_path)
            print(f"read back with gguf's reader: {len(tensors)} tensors, architecture "
                  f"{gmeta['general.architecture']}, {len(gmeta)} metadata keys")
            from ..common import write_json_atomic

            write_json_atomic(tmp / ex.MARKER, {"format": "gguf", "architecture": arch, **provenance})
            result["tensors"] = len(tensors)
        ex.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for f in sorted(out.iterdir()):
        print(f"  {f.name:<28} {f.stat().st_size / 2**20:9.2f} MiB")
    if args.format == "hf":
        print(f"load it: AutoModelForCausalLM.from_pretrained({str(out)!r}); AutoTokenizer.from_pretrained(...)")
    else:
        print(f"run it: llama-cli -m {out / 'model.gguf'}  (see docs/comparisons/export.md for the tokenizer caveat)")
    return result
