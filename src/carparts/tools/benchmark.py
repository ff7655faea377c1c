"""CPU inference benchmark in one process: the reference U-Net/ResNet-34 (eager torch) against a model on eager
torch and on onnxruntime; latency, throughput, FLOPs, share of the machine's matmul peak, memory, end to end; and,
when asked, the latency of a test-time configuration (flip TTA, several input sizes, an ensemble of models)."""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from carparts.backend_onnx import OnnxPredictor
from carparts.export import export_onnx
from carparts.images import read_image, write_atomic
from carparts.loading import load_predictor, split_models
from carparts.models import ModelInfo, build_model, load_model
from carparts.paths import SAMPLES
from carparts.predict import Predictor, preprocess

REFERENCE = ("unet", "resnet34")  # the ``seed`` preset's architecture, the baseline every speed-up is against


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures; ``photo_sizes`` are (width, height) of native photos."""

    threads: int = 2
    iters: int = 20
    warmup: int = 2
    batch: int = 8
    photo_sizes: tuple[tuple[int, int], ...] = ((512, 512), (1600, 1200))  # the data set's photos; a camera's
    matmul_size: int = 2048
    reference_size: int = 512  # the reference runs on the data set's 512x512 photos at their native size

    @classmethod
    def quick(cls, threads: int) -> Settings:
        """Tiny sizes and two runs: checks that everything runs; the figures mean nothing."""
        return cls(
            threads=threads, iters=2, warmup=1, batch=2, photo_sizes=((64, 64), (96, 72)), matmul_size=128,
            reference_size=64,
        )  # fmt: skip


def summarise(seconds: list[float]) -> dict[str, float]:
    """Median and 95th percentile, in milliseconds."""
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3)}


def time_calls(call: Callable[[], Any], iters: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(threads: int) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "threads_used": threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def matmul_peak_gflops(size: int, iters: int) -> float:
    """Best fp32 GFLOP/s of a ``size``² torch matmul at the current thread count: the machine's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(time_calls(lambda: torch.mm(a, b), iters=max(iters, 3), warmup=1))
    return 2 * size**3 / best / 1e9


def count_gflops(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """GFLOPs per image (a multiply-add counts 2) of one forward pass, from torch's FLOP counter."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(batch)
    return counter.get_total_flops() / batch.shape[0] / 1e9


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux ``clear_refs``), so peaks are per model."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB; the lifetime peak where /proc is missing."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_photos(sizes: tuple[tuple[int, int], ...], folder: Path) -> list[Path]:
    """A bundled sample photo resized to each (width, height), saved as JPEG as a camera would."""
    sample = Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB")
    paths = []
    for width, height in sizes:
        path = folder / f"photo_{width}x{height}.jpg"
        sample.resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def measure_photo(predictor: Predictor, path: Path, settings: Settings) -> dict[str, Any]:
    """Latency of the whole predict path (letterbox, network, resize back, argmax) and of the network alone."""
    image = read_image(path)
    x, _ = preprocess(image, predictor.info)
    row = {"photo": f"{image.shape[1]}x{image.shape[0]}", "network_input": f"{x.shape[3]}x{x.shape[2]}"}
    row["latency"] = summarise(time_calls(lambda: predictor(image), settings.iters, settings.warmup))
    row["network"] = summarise(time_calls(lambda: predictor.run(x), settings.iters, settings.warmup))
    if isinstance(predictor.model, torch.nn.Module):
        row["gflops"] = round(count_gflops(predictor.model, x), 3)
    return row


def measure_end_to_end(predictor: Predictor, path: Path, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """What ``carparts predict`` does per photo: decode, infer, write mask, overlay and JSON; per stage."""
    stages: dict[str, list[float]] = {"decode": [], "infer": [], "write": [], "total": []}
    for k in range(settings.warmup + settings.iters):
        t0 = time.perf_counter()
        image = read_image(path)
        t1 = time.perf_counter()
        result = predictor.result(image, str(path))
        t2 = time.perf_counter()
        result.save(out_dir, path.stem)
        t3 = time.perf_counter()
        if k >= settings.warmup:
            for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                stages[name].append(seconds)
    medians = {f"{name}_ms": summarise(seconds)["p50_ms"] for name, seconds in stages.items()}
    return {"photo": path.stem.removeprefix("photo_"), **medians}


def measure(
    role: str, backend: str, make_predictor: Callable[[], Predictor], photos: list[Path], settings: Settings,
    out_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    """Every figure for one model on one backend; the model is built here so its memory is counted."""
    gc.collect()
    rss_before = rss_mb("VmRSS")
    per_model_peak = reset_peak_rss()
    predictor = make_predictor()
    info = predictor.info
    rows = [measure_photo(predictor, path, settings) for path in photos]
    x, _ = preprocess(read_image(photos[-1]), info)
    batch = x.repeat(settings.batch, 1, 1, 1)
    seconds = time_calls(lambda: predictor.run(batch), settings.iters, settings.warmup)
    result = {
        "role": role, "backend": backend, "model_id": info.model_id, "arch": info.arch, "encoder": info.encoder,
        "input_size": info.input_size, "photos": rows,
        "throughput": {"batch": settings.batch, "network_input": rows[-1]["network_input"],
                       "images_per_s": round(settings.batch / float(np.median(seconds)), 3)},
        "end_to_end": measure_end_to_end(predictor, photos[-1], settings, out_dir),
        "rss_before_mb": round(rss_before, 1), "peak_rss_mb": round(rss_mb("VmHWM"), 1),
        "peak_rss_scope": "this model" if per_model_peak else "whole process so far",
    }  # fmt: skip
    return result  # the predictor goes with this frame; the next measure() collects it first


def photo_latency(predictor: Predictor, path: Path, settings: Settings) -> dict[str, Any]:
    """Latency of ``predictor(image)`` on one photo: the whole predict path up to the mask."""
    image = read_image(path)
    latency = summarise(time_calls(lambda: predictor(image), settings.iters, settings.warmup))
    return {"photo": f"{image.shape[1]}x{image.shape[0]}", "latency": latency}


def measure_config(
    models: list[str | Path | None], onnx_paths: list[Path], tta: bool, input_size: list[int] | None,
    photos: list[Path], settings: Settings, crop: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Latency per photo of a test-time configuration as ``carparts predict`` runs it (every member at every size,
    each with its mirrored view under TTA, probabilities averaged, resized back, argmax), on torch and onnx."""
    rows, sizes = [], input_size
    for backend, sources in (("torch", models), ("onnx", onnx_paths)):
        predictor = load_predictor(
            sources, backend, tta=tta, threads=settings.threads, input_size=input_size, crop=crop
        )
        rows += [{"backend": backend, **photo_latency(predictor, path, settings)} for path in photos]
        runs = predictor.network_runs
        members = getattr(predictor, "members", [predictor])
        sizes = input_size or sorted({member.info.input_size for member in members})  # each model's own, stated
        del predictor, members
        gc.collect()
    return {
        "models": len(models), "input_size": sizes, "tta": tta, "crop": crop, "network_runs_per_photo": runs,
        "rows": rows,
    }  # fmt: skip


def add_derived(results: list[dict[str, Any]], peak_gflops: float) -> dict[str, Any]:
    """Fill in FLOPs for onnxruntime (same network as torch), share of the matmul peak, and the speed-ups of
    the fastest backend of the model over the reference."""
    torch_rows = {r["role"]: r["photos"] for r in results if r["backend"] == "torch"}
    for result in results:
        for row, torch_row in zip(result["photos"], torch_rows[result["role"]], strict=True):
            row["gflops"] = torch_row["gflops"]
            row["share_of_matmul_peak_b1"] = round(row["gflops"] / (row["network"]["p50_ms"] / 1000) / peak_gflops, 4)
        throughput = result["throughput"]
        achieved = result["photos"][-1]["gflops"] * throughput["images_per_s"]
        throughput["share_of_matmul_peak"] = round(achieved / peak_gflops, 4)
        end_to_end, photo = result["end_to_end"], result["photos"][-1]
        end_to_end["network_ms"], end_to_end["latency_ms"] = photo["network"]["p50_ms"], photo["latency"]["p50_ms"]
        # the issue's target: `carparts predict` per photo within 2x the model's own latency
        end_to_end["over_latency"] = round(end_to_end["total_ms"] / end_to_end["latency_ms"], 2)
        end_to_end["over_network"] = round(end_to_end["total_ms"] / end_to_end["network_ms"], 2)

    reference = next(r for r in results if r["role"] == "reference")
    candidates = [r for r in results if r["role"] == "model"]
    fastest = min(candidates, key=lambda r: r["photos"][-1]["latency"]["p50_ms"])
    speedup: dict[str, Any] = {"model": fastest["model_id"], "backend": fastest["backend"], "over": "reference"}
    for ref_row, row in zip(reference["photos"], fastest["photos"], strict=True):
        speedup[f"latency_p50_{row['photo']}"] = round(ref_row["latency"]["p50_ms"] / row["latency"]["p50_ms"], 2)
    ref_rate, rate = reference["throughput"]["images_per_s"], fastest["throughput"]["images_per_s"]
    speedup[f"throughput_b{reference['throughput']['batch']}"] = round(rate / ref_rate, 2)
    return speedup


def config_speedup(config: dict[str, Any], reference: dict[str, Any]) -> None:
    """Add ``speedup_over_reference`` to each row of the configuration: the reference's latency on that photo
    (eager torch, one run, no TTA) over the configuration's."""
    reference_ms = {row["photo"]: row["latency"]["p50_ms"] for row in reference["photos"]}
    for row in config["rows"]:
        row["speedup_over_reference"] = round(reference_ms[row["photo"]] / row["latency"]["p50_ms"], 2)


def config_markdown(config: dict[str, Any], command: str) -> list[str]:
    """The test-time configuration's table."""
    sizes = ", ".join(str(s) for s in config["input_size"])
    lines = [
        "",
        f"## Test-time configuration: {config['models']} model(s) at input size {sizes}, flip TTA "
        f"{'on' if config['tta'] else 'off'}{f', crop {crop}' if (crop := config.get('crop')) else ''} "
        f"({config['network_runs_per_photo']} network runs per photo)",
        "",
        f"`{command}`: the whole predict path per photo (letterbox at each size, network, mirrored view, "
        "probabilities averaged, resize back, argmax). With several models, the tables above measure the first.",
        "",
        "| backend | photo | latency p50 / p95 (ms) | speed-up over the reference (eager torch, one run) |",
        "|---|---|---|---|",
    ]
    for row in config["rows"]:
        lat = row["latency"]
        lines.append(
            f"| {row['backend']} | {row['photo']} | {lat['p50_ms']:.1f} / {lat['p95_ms']:.1f} "
            f"| ×{row['speedup_over_reference']} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown: machine and settings first, then one table of latencies and one of the rest."""
    m, s = report["machine"], report["settings"]
    lines = [
        "# CPU inference benchmark",
        "",
        f"Command: `{report['command']}` ({report['date']})",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores; {m['threads_used']} threads used "
        f"(`torch.set_num_threads`, onnxruntime `intra_op_num_threads`); torch {m['torch']}, onnxruntime "
        f"{m['onnxruntime']}, Python {m['python']}; measured fp32 matmul peak {report['matmul_peak_gflops']:.1f} "
        f"GFLOP/s (torch.mm {s['matmul_size']}², same threads).",
        "",
        f"Photos: {', '.join(f'{w}x{h}' for w, h in s['photo_sizes'])} JPEG (a bundled sample photo resized), "
        f"letterboxed as `carparts predict` does; {s['iters']} timed runs after {s['warmup']} warm-up runs. "
        "Latency = letterbox + network + resize back + argmax (no TTA); network = the network alone on the "
        f"letterboxed input. The reference is smp U-Net + ResNet-34 with random weights at {s['reference_size']} px "
        "input (the data set's native photo size, as in the reference figure of 0.2-0.25 s per 512² photo).",
        "",
        "| model | backend | photo | network input | latency p50 / p95 (ms) | network p50 / p95 (ms) | GFLOPs/img "
        "| share of matmul peak (b1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        for row in r["photos"]:
            lat, net = row["latency"], row["network"]
            lines.append(
                f"| {r['role']}: {r['arch']}/{r['encoder']} | {r['backend']} | {row['photo']} | {row['network_input']} "
                f"| {lat['p50_ms']:.1f} / {lat['p95_ms']:.1f} | {net['p50_ms']:.1f} / {net['p95_ms']:.1f} "
                f"| {row['gflops']:.2f} | {100 * row['share_of_matmul_peak_b1']:.1f} % |"
            )
    batch = report["settings"]["batch"]
    lines += [
        "",
        f"| model | backend | throughput b{batch} (img/s) | share of matmul peak (b{batch}) "
        "| peak RSS (MB, +over the process before) | end to end per photo: decode / infer / write / total (ms) "
        "| network alone (ms) | end to end ÷ latency / ÷ network |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        t, e = r["throughput"], r["end_to_end"]
        grown = r["peak_rss_mb"] - r["rss_before_mb"]
        lines.append(
            f"| {r['role']}: {r['arch']}/{r['encoder']} | {r['backend']} | {t['images_per_s']:.2f} "
            f"| {100 * t['share_of_matmul_peak']:.1f} % | {r['peak_rss_mb']:.0f} (+{grown:.0f}) "
            f"| {e['decode_ms']:.1f} / {e['infer_ms']:.1f} / {e['write_ms']:.1f} / {e['total_ms']:.1f} ({e['photo']}) "
            f"| {e['network_ms']:.1f} | ×{e['over_latency']} / ×{e['over_network']} |"
        )
    sp = report["speedup"]
    ratios = ", ".join(f"{k.replace('_', ' ')} ×{v}" for k, v in sp.items() if k not in ("model", "backend", "over"))
    lines += ["", f"Speed-up of {sp['model']} on {sp['backend']} over the reference (eager torch): {ratios}."]
    if "config" in report:
        lines += config_markdown(report["config"], report["command"])
    return "\n".join(lines + [""])


def benchmark(
    model: str | Path | None, threads: int = 2, iters: int = 20, quick: bool = False,
    out: Path = Path("docs/benchmarks.json"), md: Path = Path("docs/benchmarks.md"), tta: bool = False,
    input_size: list[int] | None = None, command: str | None = None, crop: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``carparts benchmark``: measure the reference and the model on torch and onnxruntime under the same
    threads and inputs, write JSON to ``out`` and a Markdown table to ``md``; return the JSON content.

    ``tta``, ``input_size``, ``crop`` or several (comma-separated) models add the latency of that test-time
    configuration, e.g. ``accurate``; the network tables then measure the first model. ``command`` is the command
    line the report states (default: rebuilt from the arguments).
    """
    settings = Settings.quick(threads) if quick else Settings(threads=threads, iters=iters)
    members = split_models(model)
    with_config = tta or bool(input_size) or crop is not None or len(members) > 1
    if command is None:
        command = f"carparts benchmark{f' --model {model}' if model else ''} --threads {threads}"
        command += " --quick" if quick else f" --iters {iters}"
        command += f" --input-size {','.join(map(str, input_size))}" if input_size else ""
        command += " --tta" if tta else ""
        command += f" --crop {crop}" if crop else ""
    model = members[0]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, info = load_model(model)
        num_classes = info.taxonomy.num_classes
        reference_info = ModelInfo(
            arch=REFERENCE[0], encoder=REFERENCE[1], taxonomy=info.taxonomy, mean=info.mean, std=info.std,
            input_size=settings.reference_size, stride=info.stride, name="reference",
        )  # fmt: skip
        peak = matmul_peak_gflops(settings.matmul_size, settings.iters)
        with tempfile.TemporaryDirectory(prefix="carparts-benchmark-") as tmp:
            folder = Path(tmp)
            photos = make_photos(settings.photo_sizes, folder)
            onnx_path = export_onnx(model, folder / "model.onnx")
            runs = [
                ("reference", "torch", lambda: Predictor(build_model(*REFERENCE, num_classes), reference_info)),
                ("model", "torch", lambda: Predictor.from_path(model)),
                ("model", "onnx", lambda: OnnxPredictor(onnx_path, threads=threads)),
            ]  # fmt: skip
            results = [measure(role, backend, make, photos, settings, folder / "out") for role, backend, make in runs]
            if with_config:
                onnx_paths = [onnx_path] + [
                    export_onnx(member, folder / f"member{k}.onnx") for k, member in enumerate(members[1:], 1)
                ]
                config = measure_config(members, onnx_paths, tta, input_size, photos, settings, crop)
    finally:
        torch.set_num_threads(threads_before)
    report = {
        "command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(settings), "machine": machine(threads), "matmul_peak_gflops": round(peak, 2),
        "results": results,
    }  # fmt: skip
    report["speedup"] = add_derived(results, peak)
    if with_config:
        config_speedup(config, results[0])
        report["config"] = config
    write_atomic(Path(out), lambda p: p.write_text(json.dumps(report, indent=2)))
    write_atomic(Path(md), lambda p: p.write_text(markdown(report)))
    print(markdown(report))
    print(f"written: {out}, {md}")
    return report
