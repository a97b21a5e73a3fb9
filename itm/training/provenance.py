"""What a run folder records about where it came from (``environment.json``): the software that trained
it, the commit of the checkout it ran from, a fingerprint of its data, and the text encoder its caption
embeddings came from, so that a copy of the folder on another machine can be trusted and reproduced."""
from __future__ import annotations

import hashlib
import platform
import re
import subprocess
import sys
from pathlib import Path

from ..data.folder import SPLIT_FILES, embeddings_path
from ..files import sha256_file
from ..tfenv import onednn_line

ENVIRONMENT_FILE = "environment.json"
# The encoder of every precomputed caption embedding itm reads (course data, itm prepare/embed, the demo);
# a new caption must be embedded by the same model (itm.models.minilm, in TensorFlow).
PRECOMPUTED_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def git_commit(path=None) -> dict | None:
    """The commit (and whether the tree had changes) of the git checkout holding itm, or None when itm
    is installed from a wheel or git is absent."""
    where = Path(path or Path(__file__).resolve().parents[2])
    if not (where / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "changed_files": len(status.stdout.splitlines())}


def data_fingerprint(data_dir) -> dict:
    """sha256 of each split file and of the embeddings file, and one over them all (name and hash each):
    equal fingerprints mean the same triples and the same caption vectors (the photos are not hashed:
    they are named by the split files, and hashing thousands of them would slow every run)."""
    data_dir = Path(data_dir)
    files = {name: data_dir / name for name in SPLIT_FILES.values() if (data_dir / name).is_file()}
    emb = embeddings_path(data_dir)
    if emb is not None:
        files[emb.name] = emb
    hashes = {name: sha256_file(path) for name, path in sorted(files.items())}
    overall = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in hashes.items()).encode()).hexdigest()
    return {"sha256": overall, "files": hashes}


DOG = re.compile(r"\b(dog|dogs|puppy|puppies)\b", re.IGNORECASE)


def data_summary(data) -> dict:
    """Per split: pairs, matches, images, distinct captions; and the share of captions that mention a dog
    (the course subset holds every Flickr8k dog photo, so its matches are about half dogs)."""
    splits, matching, pairs = {}, set(), []
    for name, split in data.splits.items():
        triples = split.triples
        splits[name] = {"pairs": len(triples), "matches": sum(t.match for t in triples),
                        "images": len({t.image for t in triples}), "captions": len({t.caption for t in triples})}
        matching |= {t.caption for t in triples if t.match}
        pairs += [t.caption for t in triples]
    share = lambda captions: round(sum(bool(DOG.search(c)) for c in captions) / max(1, len(captions)), 4)  # noqa: E731
    return {"splits": splits, "dog_share_of_match_captions": share(matching), "dog_share_of_pairs": share(pairs)}


def _program() -> str:
    name = Path(sys.argv[0]).name
    return "itm" if name == "__main__.py" else name  # python -m itm


def _onednn() -> str:
    """TensorFlow's oneDNN state in this run and why (``itm.tfenv``): it changes speed, and the last digits."""
    return onednn_line().removeprefix("oneDNN: ")


def environment(config: dict, data=None) -> dict:
    """The environment.json of a run trained with ``config`` (its data folder must exist) on ``data``."""
    version = sys.modules[__name__.split(".")[0]].__version__  # the itm package, imported before any of its modules
    text_tower = config.get("text_tower", "precomputed")
    return {
        "itm": version,
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onednn": _onednn(),
        "git": git_commit(),
        "command": " ".join([_program(), *sys.argv[1:]]),
        "data": {"folder": config["data_dir"], **data_fingerprint(config["data_dir"]),
                 **(data_summary(data) if data is not None else {})},
        "text_encoder": PRECOMPUTED_ENCODER if text_tower == "precomputed"
        else f"inside the model ({text_tower} text tower, on caption strings)",
    }
