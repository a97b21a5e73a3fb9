"""What each subcommand does with its parsed arguments: a thin call into the library."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ConfigError, DataError
from ..options import OPTIONS


def run_train(args) -> int:
    from ..options import resolve_config
    from ..training.run import train

    config = resolve_config(args.preset or "faithful", **{k: getattr(args, k) for k in OPTIONS if k != "preset"})
    train(config)
    return 0


def run_evaluate(args) -> int:
    from ..data.folder import load_data_dir
    from ..evaluation.evaluate import evaluate_model
    from ..evaluation.report import write_report
    from ..training.run_folder import SavedRun

    run = SavedRun(args.run, finished=True)
    config = run.config
    if not run.data_dir:
        raise DataError(f"{run.path} does not name the run's data folder (its config is damaged)")
    raw_text = config.get("text_tower", "precomputed") != "precomputed"
    own = not args.data_dir or Path(args.data_dir).resolve() == Path(run.data_dir).resolve()
    if own:
        splits = ("dev", "test") if args.split == "all" else (args.split,)
        data = load_data_dir(run.data_dir, limit=config.get("limit"), need_embeddings=not raw_text)
        threshold, tag = None, None
    else:  # other photos: scored at the run's own dev-calibrated threshold, files named after the folder
        if args.split == "all":
            raise ConfigError("--split all is for the run's own data folder; score another folder's test split")
        threshold, source = run.threshold()
        splits, tag = (args.split,), args.name or Path(args.data_dir).resolve().name
        data = load_data_dir(args.data_dir, splits=splits, need_embeddings=not raw_text)
        print(f"Scoring {args.data_dir} ({args.split} split) as '{tag}', threshold {source}")
    evaluate_model(run.load_model(), data, run.path, splits=splits, seed=config.get("seed") or 0,
                   with_retrieval=not args.no_retrieval, threshold=threshold, tag=tag)
    print(f"Report: {write_report(run.path, (tag,) if tag else splits)}")
    return 0


def run_ood_split(args) -> int:
    from ..data.ood import ood_split

    ood_split(args.captions, args.images, args.out, photos=args.photos, negatives=args.negatives, seed=args.seed,
              exclude=args.exclude or (), train_out=args.train_out, course=args.course, embed=not args.no_embed)
    return 0


def run_bench(args) -> int:
    from ..data.source import resolve_data_dir
    from ..training import bench

    if args.one:
        print(json.dumps(bench.measure(args.one, args.data_dir, args.steps, args.precision)))
        return 0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in bench.SETTINGS]
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(bench.SETTINGS)}")
    data_dir, origin = resolve_data_dir(args.data_dir)
    print(origin, file=sys.stderr)
    print(json.dumps(bench.run(str(data_dir), settings, args.steps, args.precision), indent=2))
    return 0


def run_compare(args) -> int:
    from ..evaluation.report import compare_table

    missing = [r for r in args.runs if not Path(r).is_dir()]
    if missing:
        raise DataError(f"not a folder: {', '.join(missing)}")
    print(compare_table(args.runs, args.split))
    return 0


def run_embed(args) -> int:
    from ..data.embed import embed_data_dir

    embed_data_dir(args.data_dir, out=args.out, model=args.model, batch_size=args.batch_size, backend=args.backend)
    return 0


def run_prepare(args) -> int:
    from ..data.prepare import prepare

    prepare(args.dataset, args.captions, args.images, args.out, seed=args.seed, negatives=args.negatives,
            splits=args.splits, image_size=args.image_size, embed=not args.no_embed, model=args.model,
            batch_size=args.batch_size, shards=args.shards)
    return 0


def run_shard(args) -> int:
    from ..data.shards import write_shards

    write_shards(args.data_dir, num_shards=args.shards, out=args.out)
    return 0


def _read_captions_file(path) -> list[str]:
    from ..errors import CaptionError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read captions file {path}: {getattr(e, 'strerror', None) or e}") from None
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise CaptionError(f"captions file {path} holds no captions (one per line)")
    return captions


def _notes(m) -> None:
    for note in m.notes:
        print(f"note: {note}", file=sys.stderr)


def run_predict(args) -> int:
    from ..serving.matcher import Matcher, check_captions

    m = Matcher.load(args.run, data_dir=args.data_dir)
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


def run_rank(args) -> int:
    from ..serving.matcher import Matcher

    m = Matcher.load(args.run, data_dir=args.data_dir)
    ranked = m.rank(args.image, _read_captions_file(args.captions), top=args.top)
    print(f"Captions that best fit {args.image} (threshold: {m.threshold_source}):")
    for i, (caption, p) in enumerate(ranked, 1):
        print(f'{i:3d}. p(match)={p:.3f}  {"Match   " if m.is_match(p) else "No-Match"}  "{caption}"')
    _notes(m)
    return 0


def run_search(args) -> int:
    from ..serving.matcher import Matcher

    m = Matcher.load(args.run, data_dir=args.data_dir)
    index = m.index_folder(args.images, log=sys.stderr)
    for why in index.skipped:
        print(f"skipped: {why}", file=sys.stderr)
    if not index.paths:
        raise DataError(f"no readable images in {args.images}")
    hits = m.search_index(index, args.query, top=args.top)
    print(f'Images that best fit "{args.query}" (threshold: {m.threshold_source}; {len(index.paths)} images, '
          f"{index.encoded} newly encoded):")
    for i, (j, p) in enumerate(hits, 1):
        print(f'{i:3d}. p(match)={p:.3f}  {"Match   " if m.is_match(p) else "No-Match"}  {index.paths[j]}')
    _notes(m)
    return 0


def run_serve(args) -> int:
    from ..serving.server import serve

    serve(args.run, data_dir=args.data_dir, images=args.images, host=args.host, port=args.port,
          max_upload_mb=args.max_upload_mb, max_image_pixels=args.max_image_pixels, log_level=args.log_level)
    return 0


COMMANDS = {"train": run_train, "evaluate": run_evaluate, "bench": run_bench, "compare": run_compare,
            "embed": run_embed, "prepare": run_prepare, "ood-split": run_ood_split, "shard": run_shard, "predict": run_predict,
            "rank": run_rank, "search": run_search, "serve": run_serve}
