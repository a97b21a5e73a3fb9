"""Make tests/fixtures/mobilenetv2_torchvision_reference.npz: torchvision's logits for a few images.

The reference for itm.models.torchvision_mobilenet's parity test, computed once with real torch and
torchvision (this script is the only place they are needed). The images are the 8 demo images of
``itm.data.demo.generate(..., sizes={"train": (4, 1, 1), "dev": (2, 1, 1), "test": (2, 1, 1)}, seed=0,
image_size=224)`` plus any ``--extra-image`` (a photo with a confident ImageNet prediction; resized to
256 and centre-cropped to 224 as torchvision's evaluation does). The npz holds the exact uint8 pixels
fed (N, 224, 224, 3), torchvision's logits (N, 1000) float32, and the image names.
Its pixels are also the input of tests/fixtures/efficientnet_lite_reference.npz: after changing them,
rerun scripts/make_efficientnet_lite_fixture.py.

Run from the repository root, in a virtualenv with torch and torchvision (e.g. /tmp/torchenv), taking
the weights file and two photos shipped with the project's test dependencies from its virtualenv
(scikit-learn's china.jpg, a palace; matplotlib's grace_hopper.jpg):

    PY=.venv/bin/python
    /tmp/torchenv/bin/python scripts/make_mobilenet_fixture.py \
        --weights "$($PY -c 'from itm.models.torchvision_mobilenet import torchvision_weights_path as p; print(p())')" \
        --extra-image "$($PY -c 'import sklearn.datasets as d, os; print(os.path.join(d.__path__[0], "images", "china.jpg"))')" \
        --extra-image "$($PY -c 'import matplotlib.cbook as c; print(c.get_sample_data("grace_hopper.jpg", asfileobj=False))')"
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from itm.data.demo import generate  # noqa: E402  (the demo generator needs only numpy and PIL)

OUT = ROOT / "tests" / "fixtures" / "mobilenetv2_torchvision_reference.npz"
SIZES = {"train": (4, 1, 1), "dev": (2, 1, 1), "test": (2, 1, 1)}
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def demo_images() -> list[tuple[str, np.ndarray]]:
    with tempfile.TemporaryDirectory() as tmp:
        images = sorted((generate(tmp, sizes=SIZES, seed=0, image_size=224) / "flickr8k-resised").glob("*.jpg"))
        return [(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in images]


def photo(path: Path) -> tuple[str, np.ndarray]:
    im = Image.open(path).convert("RGB")
    scale = 256 / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
    left, top = (im.width - 224) // 2, (im.height - 224) // 2
    return path.name, np.asarray(im.crop((left, top, left + 224, top + 224)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="mobilenet_v2-b0353104.pth")
    parser.add_argument("--extra-image", type=Path, action="append", default=[])
    args = parser.parse_args()

    named = demo_images() + [photo(p) for p in args.extra_image]
    names = np.array([n for n, _ in named])
    pixels = np.stack([a for _, a in named]).astype(np.uint8)

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    x = torch.from_numpy(((pixels.astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        logits = model(x).numpy().astype(np.float32)

    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    for name, p in zip(names, probs):
        top = int(p.argmax())
        print(f"{name}: {categories[top]} ({top}) p={p[top]:.3f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, pixels=pixels, logits=logits, names=names)
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes; torch {torch.__version__}, torchvision {torchvision.__version__})")


if __name__ == "__main__":
    main()
