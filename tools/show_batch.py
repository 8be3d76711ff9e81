"""
Visualise one packed training batch: each row of T+1 tokens, a new colour where each document starts
(at its BOS), and the cropped document at the row's end underlined.

    python tools/show_batch.py                 # B=4, T=256 from the embedded corpus
    python tools/show_batch.py --B 2 --T 512 --html batch.html
"""
from __future__ import annotations

import argparse
import html

COLOURS = ["\033[48;5;153m", "\033[48;5;223m", "\033[48;5;194m", "\033[48;5;225m", "\033[48;5;230m"]
HTML_COLOURS = ["#bde0fe", "#ffe5b4", "#d4f5d4", "#ffd6e8", "#fff9c4"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--corpus", default="embedded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--html", default=None, help="also write the batch as an HTML page")
    args = p.parse_args()

    from mini_nanochat.dataloader import DataLoader
    from mini_nanochat.tokenizer import get_tokenizer

    tok = get_tokenizer()
    loader = DataLoader(tok, args.B, args.T, corpus=args.corpus, seed=args.seed, prefetch=0)
    x, y = next(loader)
    rows = [xi + [yi[-1]] for xi, yi in zip(x.tolist(), y.tolist())]
    pages = []
    for r, row in enumerate(rows):
        starts = [i for i, t in enumerate(row) if t == tok.bos_id]
        print(f"\n=== row {r}: {len(starts)} documents start at positions {starts} ===")
        out, page, doc = [], [], -1
        for i, t in enumerate(row):
            if t == tok.bos_id:
                doc += 1
            piece = tok.decode([t]) if t != tok.bos_id else "<|bos|>"
            last = doc == len(starts) - 1
            style = COLOURS[doc % len(COLOURS)] + ("\033[4m" if last else "")
            out.append(f"\033[30m{style}{piece}\033[0m")
            page.append(f'<span style="background:{HTML_COLOURS[doc % len(HTML_COLOURS)]}'
                        f'{";text-decoration:underline" if last else ""}">{html.escape(piece)}</span>')
        print("".join(out))
        pages.append(f"<h3>row {r}: documents start at {starts}</h3><p style='white-space:pre-wrap;"
                     f"font-family:monospace'>{''.join(page)}</p>")
    s = loader.stats
    print(f"\n{s.docs} documents in {s.rows} rows; {s.cropped_tokens} of {s.doc_tokens_taken} document tokens "
          f"cropped ({100 * s.cropped_fraction:.1f}%); utilisation {s.utilisation:.3f} (no padding)")
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write("<!doctype html><meta charset='utf-8'><title>packed batch</title>" + "".join(pages))
        print(f"wrote {args.html}")
    loader.close()


if __name__ == "__main__":
    main()
