#!/usr/bin/env python
"""Generate the synthetic demo dataset, or recompute its committed caption embeddings.

    python scripts/make_demo_data.py --out DIR [--seed S] [--train N --dev N --test N] [--image-size PX]
    python scripts/make_demo_data.py --embed-captions   # needs: pip install .[embed]

Training without --data-dir generates the default demo on its own (see itm/data/demo.py).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from itm.data import demo  # noqa: E402


def embed_captions() -> None:
    """Compute all-MiniLM-L6-v2 embeddings of every demo caption into itm/assets/demo_captions.npz."""
    import numpy as np
    from itm.models.encoders import load_sentence_transformer

    captions = demo.all_captions()
    model = load_sentence_transformer()
    vectors = model.encode(captions, batch_size=64, convert_to_numpy=True).astype(np.float32)
    demo.ASSET.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(demo.ASSET, captions=np.array(captions), embeddings=vectors)
    print(f"wrote {len(captions)} caption embeddings {vectors.shape} to {demo.ASSET}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="folder to write the dataset to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    for split, (n, _, _) in demo.DEFAULT_SIZES.items():
        p.add_argument(f"--{split}", type=int, default=n, help=f"images in the {split} split (default {n})")
    p.add_argument("--embed-captions", action="store_true", help="recompute itm/assets/demo_captions.npz")
    args = p.parse_args()
    if args.embed_captions:
        embed_captions()
        return
    if not args.out:
        p.error("--out is required (or --embed-captions)")
    sizes = {s: (getattr(args, s), m, k) for s, (_, m, k) in demo.DEFAULT_SIZES.items()}
    out = demo.generate(args.out, sizes=sizes, seed=args.seed, image_size=args.image_size)
    print(f"wrote demo dataset to {out}")


if __name__ == "__main__":
    main()
