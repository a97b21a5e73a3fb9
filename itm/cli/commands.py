"""What each subcommand does with its parsed arguments: a thin call into the library.

The one place where imports wait: each command whose library imports TensorFlow (training, data folders
that embed or shard, a model loaded) imports it inside its function, when it runs, so ``itm --help`` and
argument mistakes never load TensorFlow, nor does ``itm compare``. What is imported here is light.
"""
from __future__ import annotations

import json
import signal
import threading
from argparse import Namespace
from contextlib import contextmanager
from pathlib import Path

from .. import output_folder
from ..captions import check_captions
from ..data.folder import load_data_dir
from ..data.source import demo_will_be_used, resolve_data_dir
from ..errors import CaptionError, ConfigError, DataError
from ..evaluation.report import compare_table, write_report
from ..log import logger, progress
from ..options import DEMO_RECIPES, OPTIONS, TrainConfig, options_from_file, resolve_config
from ..run_files import record
from ..training.model_card import write_model_card
from ..models.run_reader import SavedRun


def train_config(args: Namespace) -> TrainConfig:
    """The TrainConfig of ``itm train``'s arguments: a recorded run's options (``--config``), then the preset's,
    with every option given on the command line overriding both."""
    given = {k: getattr(args, k) for k in OPTIONS}
    if getattr(args, "config", None):
        given = {**options_from_file(args.config), **{k: v for k, v in given.items() if v is not None}}
    preset = given.pop("preset", None) or "faithful"
    recipe = DEMO_RECIPES.get(preset, {}) if not getattr(args, "config", None) else {}
    if recipe and demo_will_be_used(given.get("data_dir")):
        kept = {k: v for k, v in recipe.items() if given.get(k) is None}
        if kept:
            logger.info(f"Demo recipe: {preset} with " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in kept.items())
                        + " on the demo's shapes (give the option to choose another)")
        given = {**given, **kept}
    return resolve_config(preset, **given)


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal other than Ctrl-C (SIGTERM: a scheduler, ``kill``, a container's stop): said
    and handled as Ctrl-C is, with the exit status 128 + its number."""
    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum = signum


@contextmanager
def terminate_as_interrupt():
    """While training, SIGTERM stops the run as Ctrl-C does (the run lock released, the last finished epoch's
    backup kept, 'interrupted' said) instead of ending the process without a word."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Interrupted(signum)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def option_origins(args: Namespace) -> dict:
    """Where each option that a recorded run's config.json (``--config``) set, and the command line did not,
    came from: for the lines that name the seed's and the data folder's origin."""
    if not getattr(args, "config", None):
        return {}
    recorded = options_from_file(args.config)
    return {k: f"--config {args.config}" for k in recorded if getattr(args, k, None) is None}


def run_train(args: Namespace) -> int:
    from ..training.run import train

    config = train_config(args)
    try:
        with terminate_as_interrupt():
            train(config, origins=option_origins(args))
    except KeyboardInterrupt as e:
        again = Interrupted(getattr(e, "signum", signal.SIGINT), "run the same command again to resume the run "
                            "from its last finished epoch")
        raise again from None
    return 0


def run_evaluate(args: Namespace) -> int:
    from ..evaluation.evaluate import evaluate_model, evaluation_name

    run = SavedRun(args.run, finished=True)
    config = run.config
    if not run.data_dir:
        raise DataError(f"{run.path} does not name the run's data folder (its config is damaged)")
    raw_text = config.get("text_tower", "precomputed") != "precomputed"
    own = not args.data_dir or Path(args.data_dir).resolve() == Path(run.data_dir).resolve()
    if args.name is not None and own:
        raise ConfigError("--name names another --data-dir's files; the run's own splits keep their names")
    if own:
        if not Path(config["data_dir"]).is_dir():
            raise DataError(f"the run's data folder {config['data_dir']} is not on this machine (the run folder was "
                            "copied or moved): score another folder with --data-dir DIR")
        splits = ("dev", "test") if args.split == "all" else (args.split,)
        data = load_data_dir(run.data_dir, limit=config.get("limit"), need_embeddings=not raw_text)
        threshold, tag = None, None
    else:  # other photos: scored at the run's own dev-calibrated threshold, files named after the folder
        if args.split == "all":
            raise ConfigError("--split all is for the run's own data folder; score another folder's test split")
        threshold, source = run.threshold()
        splits, tag = (args.split,), evaluation_name(run.path, args.data_dir, args.name)
        data = load_data_dir(args.data_dir, splits=splits, need_embeddings=not raw_text)
        logger.info(f"Scoring {args.data_dir} ({args.split} split) as '{tag}', threshold {source}")
    evaluate_model(run.load_model(), data, run.path, splits=splits, seed=config.get("seed") or 0,
                   with_retrieval=not args.no_retrieval, threshold=threshold, tag=tag, rerank=args.rerank,
                   run_config=config)
    record(run.path, "report.md")
    print(f"Report: {write_report(run.path, (tag,) if tag else splits)}")
    card = write_model_card(run.path)
    if card is not None:
        print(f"Model card: {card}")
    return 0


def run_ood_split(args: Namespace) -> int:
    from ..data.ood import ood_split

    ood_split(args.captions, args.images, args.out, photos=args.photos, negatives=args.negatives, seed=args.seed,
              exclude=args.exclude or (), train_out=args.train_out, course=args.course, embed=not args.no_embed,
              protocol=args.protocol)
    return 0


def run_bench(args: Namespace) -> int:
    from ..training import bench

    if args.one:
        print(json.dumps(bench.measure(args.one, args.data_dir, args.steps, args.precision)))
        return 0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in bench.SETTINGS]
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(bench.SETTINGS)}")
    data_dir, origin = resolve_data_dir(args.data_dir)
    logger.info(origin)
    print(json.dumps(bench.run(str(data_dir), settings, args.steps, args.precision), indent=2))
    return 0


def run_compare(args: Namespace) -> int:
    missing = [r for r in args.runs if not Path(r).is_dir()]
    if missing:
        raise DataError(f"not a folder: {', '.join(missing)}")
    print(compare_table(args.runs, args.split))
    return 0


def run_embed(args: Namespace) -> int:
    from ..data.embed import embed_data_dir

    embed_data_dir(args.data_dir, out=args.out, model=args.model, batch_size=args.batch_size, backend=args.backend)
    return 0


def run_prepare(args: Namespace) -> int:
    from ..data.prepare import prepare

    prepare(args.dataset, args.captions, args.images, args.out, seed=args.seed, negatives=args.negatives,
            splits=args.splits, image_size=args.image_size, embed=not args.no_embed, model=args.model,
            batch_size=args.batch_size, shards=args.shards)
    return 0


def run_shard(args: Namespace) -> int:
    from ..data.shards import write_shards

    write_shards(args.data_dir, num_shards=args.shards, out=args.out)
    return 0


def _read_captions_file(path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read captions file {path}: {getattr(e, 'strerror', None) or e}") from None
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise CaptionError(f"captions file {path} holds no captions (one per line)")
    return captions


def _matcher(args: Namespace):
    """The run's ``Matcher`` (``--run``, ``--data-dir``), for predict, rank, search and explain."""
    from ..serving.matcher import Matcher

    return Matcher.load(args.run, data_dir=args.data_dir)


def _notes(m) -> None:
    for note in m.notes:
        logger.warning(f"note: {note}")


def run_predict(args: Namespace) -> int:
    m = _matcher(args)
    captions = check_captions(args.caption)
    p = m.score(args.image, captions)[0]
    results = [{"caption": c, "p_match": float(q), "match": m.is_match(q)} for c, q in zip(captions, p)]
    if args.json:
        print(json.dumps({"image": str(args.image), "results": results, "threshold": m.threshold,
                          "threshold_source": m.threshold_source, "notes": m.notes}, indent=2))
        return 0
    print(f"Threshold: {m.threshold_source}")
    for r in results:
        print(f'Caption: "{r["caption"]}"  Prediction: {"Match" if r["match"] else "No-Match"}  '
              f'p(match)={r["p_match"]:.2f}  Image: {args.image}')
    _notes(m)
    return 0


def run_rank(args: Namespace) -> int:
    m = _matcher(args)
    ranked = m.rank(args.image, _read_captions_file(args.captions), top=args.top)
    print(f"Captions that best fit {args.image} (threshold: {m.threshold_source}):")
    for i, (caption, p) in enumerate(ranked, 1):
        print(f'{i:3d}. p(match)={p:.3f}  {"Match   " if m.is_match(p) else "No-Match"}  "{caption}"')
    _notes(m)
    return 0


def run_search(args: Namespace) -> int:
    m = _matcher(args)
    index = m.index_folder(args.images, log=progress)
    for why in index.skipped:
        logger.warning(f"skipped: {why}")
    if not index.paths:
        raise DataError(f"no readable images in {args.images}")
    hits = m.search_index(index, args.query, top=args.top)
    print(f'Images that best fit "{args.query}" (threshold: {m.threshold_source}; {len(index.paths)} images, '
          f"{index.encoded} newly encoded):")
    for i, (j, p) in enumerate(hits, 1):
        print(f'{i:3d}. p(match)={p:.3f}  {"Match   " if m.is_match(p) else "No-Match"}  {index.paths[j]}')
    _notes(m)
    return 0


def run_explain(args: Namespace) -> int:
    from ..explain import is_explain_png, photo_pixels, write_png

    if args.output:
        if Path(args.output).suffix.lower() != ".png":
            raise ConfigError(f"--output {args.output}: the figure is a PNG; give a name ending in .png")
        if Path(args.output).resolve() == Path(args.image).resolve():
            raise DataError(f"--output {args.output} is the --image itself: choose another --output")
        output_folder.check_new_file(args.output, "--output", args.overwrite, is_explain_png,
                                     "a figure written by 'itm explain'")
    m = _matcher(args)
    e = m.explain(args.image, args.caption)
    if args.output:
        write_png(e, photo_pixels(args.image), args.output)
    if args.json:
        print(json.dumps({"image": str(args.image), **e.to_json(), "threshold_source": m.threshold_source,
                          "figure": str(args.output) if args.output else None}, indent=2))
        return 0
    row, col = (int(i) for i in divmod(int(e.grid.argmax()), e.grid.shape[1]))
    print(f'Caption: "{e.caption}"  Prediction: {"Match" if e.match else "No-Match"}  p(match)={e.p_match:.3f}  '
          f"Threshold: {m.threshold_source}")
    print(f"Map: Grad-CAM on {e.layer}, a {e.grid.shape[0]}x{e.grid.shape[1]} grid; its peak at row {row}, "
          f"column {col} (from the top left)")
    if e.words is not None:
        print("Words (p(match) with the word minus p(match) without it):")
        for word, score in e.words:
            print(f"  {score:+.3f}  {word}")
    if args.output:
        print(f"Figure: {args.output}")
    for note in e.notes:
        logger.warning(f"note: {note}")
    return 0


def run_serve(args: Namespace) -> int:
    from ..serving.server import serve

    serve(args.run, data_dir=args.data_dir, images=args.images, host=args.host, port=args.port,
          max_upload_mb=args.max_upload_mb, max_image_pixels=args.max_image_pixels, log_level=args.log_level,
          read_timeout=args.read_timeout, max_connections=args.max_connections)
    return 0


def run_export(args) -> int:
    from ..serving.export import export

    out = export(args.run, args.output, fmt=args.format, quantize=args.quantize, overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    print(f"Exported {args.run} to {out} ({args.format}{', quantized' if args.quantize else ''}, "
          f"{size / 2**20:.1f} MiB)")
    return 0


COMMANDS = {"train": run_train, "evaluate": run_evaluate, "bench": run_bench, "compare": run_compare,
            "embed": run_embed, "prepare": run_prepare, "ood-split": run_ood_split, "shard": run_shard, "predict": run_predict,
            "rank": run_rank, "search": run_search, "explain": run_explain, "serve": run_serve, "export": run_export}
