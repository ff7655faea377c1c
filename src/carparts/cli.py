"""The ``carparts`` command: argument parsing only; each subcommand calls one function."""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from carparts.config import CROPS, PRESETS, TrainConfig
from carparts.errors import CarpartsError, print_line
from carparts.images import check_output_folder

BACKENDS = ["torch", "onnx"]
BACKEND_HELP = "torch, or onnx (onnxruntime on the CPU; --model may be an .onnx file)"
INPUT_SIZE_HELP = (
    "longest side the network sees, in px (default: the size the model was trained at); several, comma-separated, "
    "average the model at each size (multi-scale TTA)"
)

ACCURATE_HELP = (
    "the accurate configuration: the bundled accurate model (FPN + Lite2, trained at 448 px) at its bundled size, "
    "512 px, with its mirrored view (2 network runs per photo); with --model or --input-size, those instead"
)


CROP_HELP = (
    "car: find the car(s) in a small first pass, then segment the box around them, framed as the training images "
    "frame their cars; none: the whole photo in one pass (default: the model's own policy, model.json's crop)"
)


def sizes(text: str) -> list[int]:
    """``--input-size 320`` or ``--input-size 320,416``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected pixel sizes like 320 or 320,416, got {text!r}") from None
    if not values or min(values) < 32:
        raise argparse.ArgumentTypeError(f"input sizes must be at least 32 px, got {text!r}")
    return values


def one_size(text: str) -> int:
    """``--input-size 512`` where only one size makes sense."""
    values = sizes(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one pixel size like 512, got {text!r}")
    return values[0]


def apply_accurate(args: argparse.Namespace) -> None:
    """``--accurate``: fill in the accurate configuration's models and sizes where not given, and turn TTA on."""
    if not getattr(args, "accurate", False):
        return
    from carparts.paths import ACCURATE_MODELS

    args.model = args.model or ",".join(str(path) for path in ACCURATE_MODELS)  # each at its own bundled size
    args.tta = True


# every TrainConfig key is a train flag named after it (img_size -> --img-size); a flag not given leaves it alone
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig))


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` key, grouped as the config groups them, with the key's description."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key in fields(TrainConfig):
        group = key.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(f"{group} (config keys; YAML and flags alike)")
        kind = {"int": int, "float": float}.get(str(key.type), str)
        text = key.metadata["help"]
        if "default" not in text:  # the value --preset fast (the default preset) gives it
            text += f" (default {PRESETS['fast'].get(key.name, key.default)})"
        groups[group].add_argument(f"--{key.name.replace('_', '-')}", type=kind, help=text)


def add_inference_options(parser: argparse.ArgumentParser, ensemble: bool = True, backend: bool = True) -> None:
    """The options every command that runs a model takes: model, backend, flip TTA, input sizes, --accurate."""
    text = "run folder or model file (default: the bundled model)"
    if ensemble:
        text += "; several, comma-separated, average their probabilities (an ensemble)"
    parser.add_argument("--model", help=text)
    if backend:
        parser.add_argument("--backend", default="torch", choices=BACKENDS, help=BACKEND_HELP)
    parser.add_argument("--tta", action="store_true", help="average with a mirrored view (left/right swapped)")
    parser.add_argument("--input-size", type=sizes, help=INPUT_SIZE_HELP)
    parser.add_argument("--crop", choices=CROPS, help=CROP_HELP)
    parser.add_argument("--accurate", action="store_true", help=ACCURATE_HELP)


def load_predictor_from(args: argparse.Namespace):
    """The predictor the inference options describe."""
    from carparts.loading import load_predictor

    return load_predictor(args.model, args.backend, tta=args.tta, input_size=args.input_size, crop=args.crop)


def cmd_train(args: argparse.Namespace) -> int:
    from carparts.config import load_config
    from carparts.report import report_run
    from carparts.train import resume_config, train

    if args.resume:
        # a resumed run is the run its config.yaml describes; silently training another recipe would be worse
        given = [key for key in ("preset", "config", *TRAIN_KEYS) if key != "epochs" and getattr(args, key) is not None]
        if given:
            flags = ", ".join(f"--{key.replace('_', '-')}" for key in given)
            raise CarpartsError(
                f"--resume continues {args.resume} with its own config; only --epochs can change (drop {flags})"
            )
        run_dir = train(resume_config(args.resume, args.epochs), resume=args.resume, progress=not args.quiet)
        if run_dir is None:
            return 0
        print(f"run folder: {run_dir}; report: {report_run(run_dir, progress=not args.quiet)}")
        return 0

    overrides = {key: getattr(args, key) for key in TRAIN_KEYS}
    preset = args.preset if args.preset or args.config else "fast"
    config = load_config(preset=preset, path=args.config, overrides=overrides)
    if args.name is None and args.config is None:
        config.name = preset
    run_dir = train(config, progress=not args.quiet)
    if run_dir is None:  # another rank of a multi-device run: rank 0 writes the report
        return 0
    report = report_run(run_dir, progress=not args.quiet)
    print(f"run folder: {run_dir}  (model: {run_dir / 'model.safetensors'}, report: {report})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from carparts.report import report_run

    print(f"report written to {report_run(args.run, progress=not args.quiet)}")
    return 0


def corruption_options(args: argparse.Namespace) -> tuple[list[str], list[int]] | None:
    """``--corruptions [NAMES]`` and ``--severities`` checked: (corruptions, severities), or None without them."""
    if args.corruptions is None:
        if any(v is not None for v in (args.severities, args.corruption_size, args.corruption_workers)):
            raise CarpartsError("--severities, --corruption-size and --corruption-workers go with --corruptions")
        return None
    from carparts.robustness import CORRUPTION_SIZE, CORRUPTION_WORKERS, SEVERITIES, parse_corruptions, parse_severities

    args.corruption_size = args.corruption_size or CORRUPTION_SIZE
    args.corruption_workers = CORRUPTION_WORKERS if args.corruption_workers is None else args.corruption_workers
    if args.corruption_size < 32:
        raise CarpartsError(f"--corruption-size must be at least 32 px, got {args.corruption_size}")
    return parse_corruptions(args.corruptions), parse_severities(args.severities or ",".join(map(str, SEVERITIES)))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from carparts.evaluate import evaluate, print_summary
    from carparts.report import report_evaluation

    if args.out:
        check_output_folder(Path(args.out))  # before the model loads
    corruptions = corruption_options(args)  # a bad name or severity is refused before the model loads
    predictor = load_predictor_from(args)
    robustness = None
    if corruptions is not None:  # first, so that the clean evaluation's report.html shows it
        from carparts.robustness import score_corruptions

        names, severities = corruptions
        robustness = score_corruptions(
            predictor, args.data, args.split, names, severities, args.corruption_size, args.out, not args.quiet,
            workers=args.corruption_workers,
        )  # fmt: skip
    if args.out:  # metrics.json plus its figures, grids and report.html
        out = Path(args.out)
        summary = report_evaluation(predictor, args.data, args.split, out, not args.quiet, robustness=robustness)
    else:
        summary = evaluate(None, args.data, split=args.split, progress=not args.quiet, predictor=predictor)
    print_summary(summary)
    if robustness is not None:
        from carparts.robustness import format_robustness, save_robustness

        summary["robustness"] = robustness
        if args.out:
            save_robustness(Path(args.out), summary)
        print(format_robustness(robustness))
    if args.out:
        print(f"metrics and report written to {Path(args.out)}/ (metrics.json, report.html)")
    return 1 if summary.get("skipped") else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from carparts.evaluate import compare, print_comparison

    print_comparison(compare(args.a, args.b))
    return 0


def cmd_cars(args: argparse.Namespace) -> int:
    from carparts.cars_eval import DEFAULT_LABELS, evaluate_cars, print_cars_summary

    labels = None if args.labels == "none" else (args.labels or DEFAULT_LABELS)
    if args.out:
        check_output_folder(Path(args.out))
    summary = evaluate_cars(
        None, args.data, args.split, labels, args.out, progress=not args.quiet, pairs=args.pairs,
        predictor=load_predictor_from(args),
    )  # fmt: skip
    print_cars_summary(summary)
    if args.out:
        print(f"per-image results written to {Path(args.out) / 'cars.json'}")
    return 0


def check_coco_options(args: argparse.Namespace) -> None:
    """The --coco options, checked before any photo is read; fills in the default tolerance."""
    from carparts.coco_export import DEFAULT_TOLERANCE, check_target

    if not args.coco and (args.coco_root is not None or args.coco_tolerance is not None or args.overwrite):
        raise CarpartsError("--coco-root, --coco-tolerance and --overwrite go with --coco FILE")
    args.coco_tolerance = DEFAULT_TOLERANCE if args.coco_tolerance is None else args.coco_tolerance
    if not args.coco:
        return
    if args.coco_tolerance < 0:
        raise CarpartsError(f"--coco-tolerance must be 0 px or more, got {args.coco_tolerance}")
    check_target(Path(args.coco), args.overwrite)


def cmd_predict(args: argparse.Namespace) -> int:
    check_coco_options(args)
    if args.engine == "ray":
        return predict_on_ray(args)
    from carparts.predict import images_to_predict, predict_paths

    out = Path(args.out)
    images = images_to_predict(args.sources, out, allow_empty=bool(args.coco))  # a bad --out: before the model loads
    if images.skipped:
        print(images.skipped_note(), file=sys.stderr)
    if args.coco:
        from carparts.coco_export import relative_names

        coco_root, _ = relative_names(images.paths, args.coco_root)  # a photo outside --coco-root: before any work
        if not images.paths:
            return write_empty_coco(args, coco_root)
    predictor = load_predictor_from(args)
    result = predict_paths(
        images.paths, predictor, out, progress=not args.quiet, on_error=print_line,
        uncertainty=args.uncertainty, coco_tolerance=args.coco_tolerance if args.coco else None,
    )  # fmt: skip
    print(f"{result.segmented} image(s) segmented with {predictor.info.model_id}; results in {out}/")
    if args.coco:
        from carparts.coco_export import coco_file, relative_names, write_coco

        _, names = relative_names([photo["path"] for photo in result.coco], coco_root)
        info = {"model": predictor.info.model_id, "root": coco_root, "tolerance_px": args.coco_tolerance}
        coco = coco_file(result.coco, names, predictor.info.taxonomy, info)
        write_coco(Path(args.coco), coco)
        print(f"COCO file: {args.coco} ({len(coco['images'])} image(s), {len(coco['annotations'])} part instance(s), "
              f"file names relative to {coco_root})")  # fmt: skip
    if result.failed:
        print(f"{len(result.failed)} image(s) failed (see errors above)", file=sys.stderr)
        return 1
    return 0


def write_empty_coco(args: argparse.Namespace, coco_root: str) -> int:
    """No photo found: a valid COCO file with no images (categories from the model's description), and a note."""
    from carparts.coco_export import coco_file, model_taxonomy, write_coco

    info = {"root": coco_root, "tolerance_px": args.coco_tolerance}
    write_coco(Path(args.coco), coco_file([], [], model_taxonomy(args.model), info))
    print(empty_coco_note(args), file=sys.stderr)
    return 0


def empty_coco_note(args: argparse.Namespace) -> str:
    return f"note: no photos found in {' '.join(args.sources)}; wrote {args.coco} with 0 images"


def predict_on_ray(args: argparse.Namespace) -> int:
    from carparts.scale import SUMMARY, predict_ray

    out = Path(args.out)
    summary = predict_ray(
        args.sources, out, model=args.model, backend=args.backend, tta=args.tta, workers=args.workers,
        threads=args.threads, address=args.ray_address, progress=not args.quiet, input_size=args.input_size,
        on_note=lambda m: print(m, file=sys.stderr), coco=Path(args.coco) if args.coco else None,
        coco_root=args.coco_root, coco_tolerance=args.coco_tolerance, crop=args.crop,
    )  # fmt: skip
    print(
        f"{summary['written']} image(s) segmented, {summary['skipped_complete']} already done, "
        f"{len(summary['failed'])} failed; results in {out}/ (summary: {out / SUMMARY})"
    )
    if args.coco:
        if not summary["images"]:
            print(empty_coco_note(args), file=sys.stderr)
        else:
            print(f"COCO file: {args.coco} ({summary['coco_images']} image(s), {summary['coco_annotations']} part "
                  f"instance(s), file names relative to {summary['coco_root']})")  # fmt: skip
    for failure in summary["failed"]:
        print(f"error: {failure['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from carparts.serve.launch import serve

    serve(
        args.model, args.host, args.port, args.backend, args.workers, args.max_upload_mb, tta=args.tta,
        input_size=args.input_size, threads=args.threads, max_queue=args.max_queue, body_timeout_s=args.body_timeout,
        crop=args.crop,
    )  # fmt: skip
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from carparts.calibration import calibrate

    record = calibrate(args.model, args.data, args.split, not args.quiet, args.tta, args.input_size)
    print(
        f"temperature {record['temperature']} fitted on {record['images']} image(s) ({record['split']} of "
        f"{record['data']}, {record['pixels']} pixels) at {record['input_size']} px"
        f"{' with the mirrored view' if record['tta'] else ''}: NLL per pixel {record['nll_before']} -> "
        f"{record['nll_after']}; stored in model.json"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from carparts.export import export

    export(args.model, Path(args.out), opset=args.opset)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.engines:
        from carparts.tools.engines import measure_engines

        workers = tuple(int(w) for w in args.ray_workers.split(","))
        out, md = Path(args.out or "docs/scale.json"), Path(args.md or "docs/scale_figures.md")
        measure_engines(args.engines, args.model, args.backend, workers, out, md)
        return 0
    from carparts.tools.benchmark import benchmark

    out, md = Path(args.out or "docs/benchmarks.json"), Path(args.md or "docs/benchmarks.md")
    command = None
    if args.accurate:  # state the flag, not the bundled models' install paths
        from carparts.paths import ACCURATE_MODELS

        command = f"carparts benchmark --accurate --threads {args.threads}"
        command += " --quick" if args.quick else f" --iters {args.iters}"
        if args.model != ",".join(str(path) for path in ACCURATE_MODELS):
            command += f" --model {args.model}"
        if args.input_size:
            command += f" --input-size {','.join(map(str, args.input_size))}"
        command += f" --crop {args.crop}" if args.crop else ""
    benchmark(
        args.model, threads=args.threads, iters=args.iters, quick=args.quick, out=out, md=md, tta=args.tta,
        input_size=args.input_size, command=command, crop=args.crop,
    )  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carparts", description="Segment the parts of cars in photos.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on a COCO data set")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named recipe (default: fast)")
    p.add_argument("--config", help="YAML file of config keys (applied after the preset; flags apply last)")
    p.add_argument("--resume", help="continue a run with its own config: its folder or a .ckpt file (with --epochs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, nor Lightning's messages and warnings")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("serve", help="HTTP service and web page (FastAPI + uvicorn)")
    add_inference_options(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes, each loading the model once")
    p.add_argument("--threads", type=int, help="torch/onnxruntime threads per worker (default: cores / workers)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default 20)")
    p.add_argument("--max-queue", type=int, default=16, help="requests that may wait per worker; more get 503 (16)")
    p.add_argument("--body-timeout", type=float, default=15.0, help="seconds an upload may stall before 408 (15)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("report", help="charts, confusion matrix, validation grids and report.html for a run")
    p.add_argument("run", help="run folder, e.g. runs/fast")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="per-class IoU/Dice and mIoU at native resolution")
    p.add_argument("--data", required=True, help="folder with annotations.json and the images; several, "
                   "comma-separated, are scored as one (--split val: each folder's val images)")  # fmt: skip
    add_inference_options(p)
    p.add_argument("--split", default="all", choices=["all", "train", "val"], help="which images (default: all)")
    p.add_argument("--out", help="folder to write metrics.json into")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--corruptions", nargs="?", const="", metavar="NAMES", help="also score under ImageNet-C "
                   "corruptions (comma-separated; none named: all 15): mPC, rPC; docs/robustness.md")  # fmt: skip
    p.add_argument("--severities", help="corruption severities, comma-separated, 1 to 5 (default: all five)")
    p.add_argument("--corruption-size", type=int, help="longest side, in px, photos are resized to before "
                   "corrupting, clean baseline too (default 352)")  # fmt: skip
    p.add_argument("--corruption-workers", type=int, help="processes corrupting photos beside the network (default 2;"
                   " 0: in this process)")  # fmt: skip
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="is B better than A? part-mIoU difference of two evaluations of the same "
                       "images, with its paired bootstrap interval")  # fmt: skip
    p.add_argument("a", help="metrics.json of `carparts evaluate --out`, or its folder")
    p.add_argument("b", help="the same for the other model, on the same images")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("cars", help="score car counts and viewpoints (carparts.cars) on a split")
    p.add_argument("--data", required=True, help="folder with annotations.json and the images")
    add_inference_options(p)
    p.add_argument("--split", default="val", choices=["all", "train", "val"], help="which images (default: val)")
    p.add_argument("--labels", help="hand labels CSV file_name,car,viewpoint (default: the bundled ones; 'none')")
    p.add_argument("--out", help="folder to write cars.json into")
    p.add_argument("--pairs", action="store_true", help="also score two-photo side-by-side collages")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cars)

    p = sub.add_parser("predict", help="segment photos: mask PNG, overlay and JSON per image")
    p.add_argument("sources", nargs="+", help="image files, folders or globs; with --engine ray also .txt/.parquet "
                   "manifests and URIs (s3://, gs://, file://...)")  # fmt: skip
    add_inference_options(p)
    p.add_argument("--out", default="runs/predict", help="output folder (default: runs/predict)")
    p.add_argument(
        "--uncertainty", action="store_true", help="also write <stem>_uncertainty.png: 1 - each pixel's probability"
    )
    p.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="local: this process; ray: a pool of Ray actors, resumable (skips finished photos)",
    )
    p.add_argument(
        "--coco", metavar="FILE", help="also write one COCO file of every photo's part instances (pre-labels for "
        "CVAT, Label Studio, FiftyOne; docs/labelling.md)",
    )  # fmt: skip
    p.add_argument(
        "--coco-root", metavar="DIR", help="COCO file names are relative to this folder (default: the photos' "
        "deepest common folder)",
    )  # fmt: skip
    p.add_argument(
        "--coco-tolerance", type=float, metavar="PX",
        help="largest distance of a simplified outline from the mask's, in px (default 1.0; 0 keeps every corner)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing --coco file")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local Ray)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors, each loading the model once (default 2)")
    p.add_argument("--threads", type=int, help="CPU threads per Ray actor (default: cores / workers)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate", help="fit a model's temperature on its val split and store it in model.json")
    p.add_argument("--model", help="run or model folder (default: the bundled model)")
    p.add_argument("--data", help="COCO folder (default: the data the model was trained on)")
    p.add_argument("--split", default="val", choices=["all", "train", "val"], help="which images (default: val)")
    p.add_argument("--tta", action="store_true", help="fit it for predictions averaged with the mirrored view")
    p.add_argument(
        "--input-size", type=one_size, help="fit it at this input size (default: the model's own)"
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("export", help="export a model to ONNX and check it against PyTorch on sample photos")
    p.add_argument("--model", help="run folder or model file (default: the bundled model)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("benchmark", help="CPU latency, throughput, memory and FLOPs: reference vs model, torch vs onnx")
    add_inference_options(p)  # --tta, --input-size, --accurate, several models: also time that configuration
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime (default 2)")
    p.add_argument("--iters", type=int, default=20, help="timed runs per measurement (default 20)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 2 runs (smoke test, figures meaningless)")
    p.add_argument("--out", help="JSON results (default: docs/benchmarks.json; with --engines docs/scale.json)")
    p.add_argument("--md", help="Markdown table (default: docs/benchmarks.md; with --engines docs/scale_figures.md)")
    p.add_argument(
        "--engines",
        nargs="+",
        metavar="SOURCE",
        help="instead: photos/s of the local and Ray engines on these photos (folders, globs, manifests)",
    )
    p.add_argument("--ray-workers", default="1,2", help="Ray actor counts for --engines (default 1,2)")
    p.set_defaults(func=cmd_benchmark)
    return parser


def print_note(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """The CLI's warnings.showwarning: a library warning is one ``note:`` line on stderr, like the errors."""
    print_line(f"note: {message}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = print_note
    apply_accurate(args)
    try:
        return args.func(args)
    except CarpartsError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # its message, if any, says how to go on (train: the --resume command)
        print(f"interrupted; {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
