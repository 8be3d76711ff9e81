"""
Stage `inspect`: look inside a trained model. Writes one HTML page (no build step, PNGs inlined) and the
PNGs beside it:

    python -m mini_nanochat inspect --model-tag speedrun --prompt "The Congress shall"
    python -m mini_nanochat inspect --run-dir runs/d4 --text "$(cat some.txt)" --out /tmp/look

Sections: attention maps per layer and head (sliding windows marked), the logit lens (the top guesses
read out after every layer), the per-token loss of a text with its most surprising tokens, the input
embeddings of the text's most frequent tokens in 2-D (PCA), and the positions (rotary frequencies, or
GPT-2's learned position vectors). The library is mini_nanochat/inspect_model.py.

Default output: <run dir>/inspect/ (index.html + *.png); --out chooses another folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..common import UserError, print0, print_config, require

DEFAULT_PROMPT = "The Congress shall have Power To lay and collect Taxes, Duties, Imposts and Excises, to pay the Debts"


def get_parser() -> argparse.ArgumentParser:
    from ..checkpoint import add_run_flags

    p = argparse.ArgumentParser(prog="mini-nanochat inspect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(p)
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="text for the attention maps and the logit lens")
    p.add_argument("--text", default="", help="text for the per-token loss and the embedding plot "
                   "(default: the start of the run's validation split, else the prompt)")
    p.add_argument("--out", default="", help="output folder (default: <run dir>/inspect)")
    p.add_argument("--pca-tokens", type=int, default=300, help="most frequent tokens of the text in the embedding plot")
    p.add_argument("--device", default="cpu", help="cpu (default; pictures need no accelerator) | cuda | mps")
    return p


def _default_text(corpus: str, n_chars: int = 4000) -> str:
    """The start of the corpus's validation split (text the model never trained on), or '' if absent."""
    from ..dataset import iter_texts

    out, n = [], 0
    try:
        for doc in iter_texts(corpus, "val"):
            out.append(doc)
            n += len(doc)
            if n >= n_chars:
                break
    except Exception:  # noqa: BLE001 - no corpus here (a copied run): the prompt stands in
        return ""
    return "\n\n".join(out)[:n_chars]


def main(argv: list[str] | None = None) -> Path:
    import torch

    from ..checkpoint import CheckpointError, load_model, run_from_flags
    from ..inspect_model import write_page

    args = get_parser().parse_args(argv)
    require(args.prompt.strip() != "", "--prompt must not be empty")
    require(1 <= args.pca_tokens <= 100_000, f"--pca-tokens must be in 1..100000, got {args.pca_tokens}")
    try:
        run_dir = run_from_flags(args)
        model, tok, meta = load_model(run_dir, args.device, torch.float32)  # fp32: the maps, not the speed
    except (CheckpointError, ValueError, RuntimeError) as e:
        raise UserError(f"inspect: {e}") from None
    text = args.text or _default_text(meta.get("corpus", "embedded")) or args.prompt
    out = Path(args.out) if args.out else Path(meta["checkpoint"]).parent.parent / "inspect"
    print_config("inspect", {"checkpoint": meta["checkpoint"], "prompt": args.prompt,
                             "text": f"{len(text):,} characters", "out": str(out)})
    page = write_page(model, tok, args.prompt, text, out, n_pca=args.pca_tokens)
    print0(f"wrote {page} (open it in a browser) and {len(list(out.glob('*.png')))} PNGs")
    return page
