"""``itm prepare``: turn a public caption dataset (Flickr8k, Flickr30k, MS-COCO) into an ITM data folder.

Reads the raw caption file and the photos, splits the images into train/dev/test, writes each image's own
captions as ``match`` and K captions of other images of its split as ``no-match``, resizes the photos, and
computes the sentence embeddings (``itm embed``). Everything is sorted and drawn from one seeded
``random.Random``, and JPEGs are written with fixed settings, so the same seed gives the same bytes.
Real caption files are messy: what can be read is read, and what was skipped is reported.
"""
from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .. import output_folder
from ..defaults import PREPARE_NEGATIVES as DEFAULT_NEGATIVES
from ..log import logger
from ..errors import DataError, MissingExtra
from ..files import atomic_write
from ..models.encoders import require_sentence_transformers
from .embed import DEFAULT_BATCH_SIZE, embed_data_dir
from .folder import EMBEDDINGS_NPZ, IMAGES_SUBDIR, SPLIT_FILES, Problems
from .shards import write_shards

SPLIT_NAMES = ("train", "dev", "test")
DEV_TEST_FRACTION = 1 / 8  # Flickr8k's official 6000/1000/1000
MIN_IMAGES_PER_SPLIT = 2   # an image's no-match captions come from other images of its split
JPEG_QUALITY = 95
# It writes only into a new or empty folder, or its own earlier output (itm.output_folder).
PREPARED = output_folder.Kind("prepare", "itm prepare", "a data folder")
_TOKEN_LINE = re.compile(r"^(?P<image>[^\t#]+)#(?P<n>\d+)(?P<sep>\t| +)(?P<caption>.*)$")
_NUMBERED_SUFFIX = re.compile(r"^(?P<base>.+\.(?:jpe?g|png))\.\d+$", re.IGNORECASE)


def _log(message: str) -> None:
    logger.info(message)


def _report(problems: Problems, what: str) -> None:
    """Print each kind of skipped or repaired input: a count and the first examples."""
    for kind, count in problems.counts.items():
        _log(f"{what}: {kind}: {count}")
        for example in problems.examples[kind]:
            _log(f"    {example}")
        if count > len(problems.examples[kind]):
            _log(f"    ... and {count - len(problems.examples[kind])} more")


def _clean(caption: str) -> str:
    """A caption fit for a tab-separated line: no tabs or line breaks, no surrounding blanks."""
    return re.sub(r"[\t\r\n]+", " ", caption).strip()


# ---------------------------------------------------------------- caption files

def _add(by_image: dict, image: str, caption: str, where: str, problems: Problems) -> None:
    image, caption = image.strip(), _clean(caption)
    if not image or not caption:
        problems.add("empty image name or caption (skipped)", where)
        return
    captions = by_image.setdefault(image, [])
    if caption in captions:
        problems.add("caption repeated for the same image (kept once)", f"{where}: {caption[:60]!r}")
    else:
        captions.append(caption)


def _lines(path: Path):
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            yield lineno, line.rstrip("\r\n")


def parse_token_file(path: Path, problems: Problems) -> dict[str, list[str]]:
    """Flickr8k.token.txt / Flickr30k results_20130124.token: ``image.jpg#N<TAB>caption`` (or a space)."""
    by_image: dict[str, list[str]] = {}
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        m = _TOKEN_LINE.match(line)
        if not m:
            problems.add("line not of the form image#N<TAB>caption (skipped)", f"{where}: {line[:80]!r}")
            continue
        if m["sep"] != "\t":
            problems.add("space instead of a tab after image#N (read anyway)", where)
        _add(by_image, m["image"], m["caption"], where, problems)
    return by_image


def parse_csv_file(path: Path, problems: Problems) -> dict[str, list[str]]:
    """The Kaggle captions.txt: CSV with header ``image,caption``; unquoted commas stay in the caption."""
    by_image: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        rows = csv.reader(f)
        next(rows, None)  # the header, checked by detect_format
        for row in rows:
            where = f"{path.name}:{rows.line_num}"
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                problems.add("line without image,caption (skipped)", f"{where}: {','.join(row)[:80]!r}")
                continue
            if len(row) > 2:
                problems.add("unquoted comma in a caption (read as part of it)", where)
            _add(by_image, row[0], ",".join(row[1:]), where, problems)
    return by_image


def parse_pipe_file(path: Path, problems: Problems) -> dict[str, list[str]]:
    """Flickr30k results.csv: ``image_name| comment_number| comment`` with a header line."""
    by_image: dict[str, list[str]] = {}
    for lineno, line in _lines(path):
        if lineno == 1 or not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        fields = line.split("|", 2)
        if len(fields) == 2:  # a known quirk: "image.jpg| 4 A dog runs ..." lacks its second '|'
            m = re.match(r"^\s*\d+\s+(.*)$", fields[1])
            if m:
                problems.add("missing '|' after the comment number (read anyway)", where)
                fields = [fields[0], "", m[1]]
        if len(fields) != 3:
            problems.add("line not of the form image| number| comment (skipped)", f"{where}: {line[:80]!r}")
            continue
        _add(by_image, fields[0], fields[2], where, problems)
    return by_image


def parse_coco_json(path: Path, problems: Problems) -> dict[str, list[str]]:
    """MS-COCO captions_*.json: ``images`` (id, file_name) and ``annotations`` (image_id, caption)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a JSON file: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path} is not a COCO captions file: it needs 'images' and 'annotations' lists")
    names = {}
    for i, image in enumerate(data["images"]):
        if isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str):
            names[image["id"]] = image["file_name"]
        else:
            problems.add("image entry without id and file_name (skipped)", f"images[{i}]: {str(image)[:80]}")
    by_image: dict[str, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            problems.add("annotation without a caption (skipped)", f"{where}: {str(ann)[:80]}")
        elif ann.get("image_id") not in names:
            problems.add("annotation for an image id not in 'images' (skipped)", f"{where}: {ann.get('image_id')!r}")
        else:
            _add(by_image, names[ann["image_id"]], ann["caption"], where, problems)
    return by_image


def read_captions(dataset: str, path: Path, problems: Problems) -> dict[str, list[str]]:
    """Parse ``path`` in whichever public form it has: token file, Kaggle CSV, Flickr30k pipe CSV, COCO JSON."""
    if not path.is_file():
        raise DataError(f"caption file {path} does not exist")
    if dataset == "coco":
        return parse_coco_json(path, problems)
    first = next((line for _, line in _lines(path) if line.strip()), "")
    header = first.replace(" ", "").lower()
    if header.startswith("image,caption"):
        return parse_csv_file(path, problems)
    if header.startswith("image_name|"):
        return parse_pipe_file(path, problems)
    if first.lstrip().startswith("{"):
        raise DataError(f"{path} looks like a COCO JSON file: use 'itm prepare coco'")
    return parse_token_file(path, problems)


# ---------------------------------------------------------------- images

def resolve_images(by_image: dict[str, list[str]], images_dir: Path, problems: Problems) -> dict[str, list[str]]:
    """Map caption-file names to files present in ``images_dir``; absent ones are reported and left out.

    ``X.jpg.1`` (a Flickr8k quirk) is read as ``X.jpg`` when only that file exists.
    """
    present = {entry.name for entry in os.scandir(images_dir) if entry.is_file()}
    usable: dict[str, list[str]] = {}
    for name in sorted(by_image):
        target = name
        if name not in present:
            m = _NUMBERED_SUFFIX.match(name)
            if m and m["base"] in present:
                problems.add("image name with a trailing .N (read as the file without it)", f"{name} -> {m['base']}")
                target = m["base"]
            else:
                problems.add(f"image named in the caption file but absent from {images_dir} (left out)", name)
                continue
        captions = usable.setdefault(target, [])
        captions += [c for c in by_image[name] if c not in captions]
    return usable


def resize_image(src: Path, dst: Path, size: int) -> str | None:
    """Write ``src`` as a ``size`` x ``size`` RGB JPEG at ``dst``; return why it failed, or None.

    A JPEG already of that size is copied byte for byte (no second lossy encoding).
    """
    try:
        with Image.open(src) as im:
            if im.format == "JPEG" and im.mode == "RGB" and im.size == (size, size):
                im.load()
                shutil.copyfile(src, dst)
                return None
            im.draft("RGB", (size, size))  # decode a large JPEG at a reduced scale: faster, same result size
            out = im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        out.save(dst, format="JPEG", quality=JPEG_QUALITY)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def resize_all(names: list[str], images_dir: Path, out_dir: Path, size: int, problems: Problems) -> list[str]:
    """Resize ``names`` into ``out_dir`` (threads: PIL releases the GIL); return those that worked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = []
    step = max(len(names) // 10, 500)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        results = pool.map(lambda n: resize_image(images_dir / n, out_dir / n, size), names)
        for i, (name, why) in enumerate(zip(names, results), start=1):
            if why:
                problems.add("image that cannot be decoded (left out)", f"{images_dir / name}: {why}")
            else:
                ok.append(name)
            if i % step == 0 or i == len(names):
                _log(f"  resized {i}/{len(names)} images")
    return ok


# ---------------------------------------------------------------- splits

def read_split_lists(spec: str) -> dict[str, list[str]]:
    """``TRAIN,DEV,TEST`` lists (e.g. Flickr_8k.trainImages.txt): one image name per line."""
    paths = [Path(p) for p in spec.split(",")]
    if len(paths) != 3 or not all(str(p).strip() for p in paths):
        raise DataError(f"--splits needs three comma-separated files TRAIN,DEV,TEST; got {spec!r}")
    lists, owner = {}, {}
    for name, path in zip(SPLIT_NAMES, paths):
        if not path.is_file():
            raise DataError(f"--splits: {name} list {path} does not exist")
        names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        lists[name] = sorted({n for n in names if n})
        for image in lists[name]:
            if image in owner:
                raise DataError(f"--splits: image {image} is listed in both the {owner[image]} and the {name} list")
            owner[image] = name
    return lists


def seeded_split(images: list[str], rng: random.Random) -> dict[str, list[str]]:
    """Shuffle and cut 6000/1000/1000-like: 1/8 dev, 1/8 test, the rest train."""
    n = len(images)
    if n < 3 * MIN_IMAGES_PER_SPLIT:
        raise DataError(f"only {n} usable image(s): at least {3 * MIN_IMAGES_PER_SPLIT} are needed "
                        f"({MIN_IMAGES_PER_SPLIT} per split, so that no-match captions can come from other images)")
    shuffled = sorted(images)
    rng.shuffle(shuffled)
    k = max(MIN_IMAGES_PER_SPLIT, round(n * DEV_TEST_FRACTION))
    return {"train": sorted(shuffled[2 * k:]), "dev": sorted(shuffled[:k]), "test": sorted(shuffled[k:2 * k])}


def draw_negatives(images: list[str], captions: dict[str, list[str]], k: int, rng: random.Random,
                   problems: Problems) -> dict[str, list[str]]:
    """For each image, ``k`` distinct captions of other images of the list, none of them its own."""
    pool = [c for image in images for c in captions[image]]
    out = {}
    for image in images:
        own = set(captions[image])
        picked: list[str] = []
        for _ in range(50 * k):  # rejection sampling: cheap on large pools
            if len(picked) == k:
                break
            c = pool[rng.randrange(len(pool))]
            if c not in own and c not in picked:
                picked.append(c)
        if len(picked) < k:  # small pool: choose among every candidate left
            rest = sorted({c for c in pool if c not in own and c not in picked})
            picked += rng.sample(rest, min(k - len(picked), len(rest)))
            if len(picked) < k:
                problems.add(f"image with fewer than {k} other captions to use as no-match", image)
        out[image] = picked
    return out


def split_lines(images: list[str], captions: dict[str, list[str]], k: int, rng: random.Random,
                problems: Problems) -> list[str]:
    """Triples of one split: each image's own captions (match), then its no-match ones; images shuffled."""
    negatives = draw_negatives(images, captions, k, rng, problems)
    order = list(images)
    rng.shuffle(order)  # so that --limit N takes a mix of images
    lines = []
    for image in order:
        lines += [f"{image}\t{c}\tmatch" for c in captions[image]]
        lines += [f"{image}\t{c}\tno-match" for c in negatives[image]]
    return lines


def write_split_file(out: Path, split: str, lines: list[str]) -> None:
    """``out``'s split file of ``split``, one triple a line, written atomically."""
    text = "\n".join(lines) + "\n"
    atomic_write(out / SPLIT_FILES[split], lambda f: f.write(text.encode("utf-8")))


# ---------------------------------------------------------------- the command

def select_images(dataset: str, captions_file: Path, images_dir: Path, out: Path, splits: str | None,
                  image_size: int, seed: int, problems: Problems):
    """Read the captions, keep the images present and decodable (resized into ``out``), and split them.

    Returns (captions by image, images by split, the seeded generator to go on drawing from).
    """
    by_image = read_captions(dataset, captions_file, problems)
    n_lines = sum(len(c) for c in by_image.values())
    _log(f"read {n_lines} captions of {len(by_image)} images from {captions_file}")
    usable = resolve_images(by_image, images_dir, problems)
    lists = read_split_lists(splits) if splits else None
    names = sorted(usable)
    if lists is not None:
        listed = {n for names_ in lists.values() for n in names_}
        for n in names:
            if n not in listed:
                problems.add("image in none of the --splits lists (left out)", n)
        for split, names_ in lists.items():
            for n in names_:
                if n not in usable:
                    problems.add(f"image in the {split} list without captions or photo (left out)", n)
        names = [n for n in names if n in listed]
    if not names:
        raise DataError(f"nothing usable: none of the {len(by_image)} images named in {captions_file} "
                        f"is present in {images_dir}" + (" and in the --splits lists" if lists else ""))

    _log(f"resizing {len(names)} images to {image_size}x{image_size} into {out / IMAGES_SUBDIR}")
    ok = resize_all(names, images_dir, out / IMAGES_SUBDIR, image_size, problems)
    rng = random.Random(seed)
    if lists is None:
        chosen = seeded_split(ok, rng)
    else:
        ok_set = set(ok)
        chosen = {s: [n for n in lists[s] if n in ok_set] for s in SPLIT_NAMES}
        for s, images in chosen.items():
            if len(images) < MIN_IMAGES_PER_SPLIT:
                raise DataError(f"the {s} split has {len(images)} usable image(s); at least {MIN_IMAGES_PER_SPLIT} "
                                "are needed")
    return usable, chosen, rng


def prepare(dataset: str, captions_file, images_dir, out, seed: int = 0, negatives: int = DEFAULT_NEGATIVES,
            splits: str | None = None, image_size: int = 224, embed: bool = True, model: str | None = None,
            batch_size: int | None = None, shards: int | None = None) -> Path:
    """Build the data folder ``out``; see the module docstring. Returns ``out``.

    ``shards``: then also write it as that many TFRecord shards of the train split (``itm.data.shards``).
    """
    captions_file, images_dir, out = Path(captions_file), Path(images_dir), Path(out)
    if shards is not None and not embed:
        raise DataError("--shards holds the embeddings too, so it cannot go with --no-embed: compute them later "
                        f"with 'itm embed --data-dir {out}', then 'itm shard --data-dir {out} --shards {shards}'")
    if embed:  # fail now, not after resizing thousands of photos
        try:
            require_sentence_transformers()
        except MissingExtra as e:
            raise MissingExtra(f"{e}; or pass --no-embed and run 'itm embed --data-dir {out}' later") from None
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    if images_dir.resolve() == (out / IMAGES_SUBDIR).resolve():
        raise DataError(f"--images {images_dir} is the output's own image folder; choose another --out")
    if negatives < 1:
        raise DataError(f"--negatives must be at least 1, got {negatives}")
    output_folder.check_apart({"--out": out}, [("--images", images_dir), ("--captions", captions_file),
                                               *(("--splits", name) for name in (splits or "").split(",") if name)])
    output_folder.claim(out, PREPARED, "--out")
    output_folder.record(out, PREPARED, IMAGES_SUBDIR, *SPLIT_FILES.values(), EMBEDDINGS_NPZ)

    problems = Problems()
    try:
        usable, chosen, rng = select_images(dataset, captions_file, images_dir, out, splits, image_size, seed,
                                            problems)
    except DataError:
        _report(problems, "skipped")  # what was left out often explains why nothing remains
        raise

    summary = []
    for s in SPLIT_NAMES:
        lines = split_lines(chosen[s], usable, negatives, rng, problems)
        write_split_file(out, s, lines)
        n_match = sum(line.endswith("\tmatch") for line in lines)
        summary.append(f"{s} {len(chosen[s])} images, {len(lines)} triples ({n_match} match)")
    _report(problems, "note")
    print(f"prepared {out}: " + "; ".join(summary), flush=True)
    if embed:
        embed_data_dir(out, model=model, batch_size=batch_size or DEFAULT_BATCH_SIZE)
    else:
        print(f"embeddings skipped (--no-embed); compute them with: itm embed --data-dir {out}", flush=True)
    if shards is not None:
        write_shards(out, num_shards=shards)
    return out
