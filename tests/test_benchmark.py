import json

import pytest
import torch

from carparts.cli import main
from carparts.tools.benchmark import count_gflops, summarise


def test_summarise_gives_median_and_p95_in_ms():
    figures = summarise([0.001 * k for k in range(1, 101)])
    assert figures == {"p50_ms": pytest.approx(50.5), "p95_ms": pytest.approx(95.05)}


def test_count_gflops_counts_a_multiply_add_as_two_per_image():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    expected = 2 * 8 * 3 * 3 * 3 * 10 * 10 / 1e9  # out channels x kernel x in channels x output pixels
    assert count_gflops(conv, torch.zeros(1, 3, 10, 10)) == pytest.approx(expected)
    assert count_gflops(conv, torch.zeros(4, 3, 10, 10)) == pytest.approx(expected)


def test_quick_benchmark_writes_json_and_markdown(tiny_model, tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    threads = torch.get_num_threads()
    args = ["benchmark", "--model", str(tiny_model), "--quick", "--threads", "1", "--out", str(out), "--md", str(md)]
    assert main(args) == 0
    assert torch.get_num_threads() == threads  # restored for the rest of the process

    report = json.loads(out.read_text())
    assert set(report) == {"command", "date", "settings", "machine", "matmul_peak_gflops", "results", "speedup"}
    assert report["machine"]["threads_used"] == 1 and report["machine"]["cpu"]
    assert report["matmul_peak_gflops"] > 0
    results = report["results"]
    assert [(r["role"], r["backend"]) for r in results] == [("reference", "torch"), ("model", "torch"),
                                                            ("model", "onnx")]  # fmt: skip
    for result in results:
        assert [row["photo"] for row in result["photos"]] == ["64x64", "96x72"]
        assert [row["network_input"] for row in result["photos"]] == ["64x64", "64x64"]  # 96x72 -> 64x48, padded
        for row in result["photos"]:
            assert 0 < row["latency"]["p50_ms"] <= row["latency"]["p95_ms"] and row["gflops"] > 0
        assert result["throughput"]["images_per_s"] > 0 and result["throughput"]["share_of_matmul_peak"] > 0
        e2e = result["end_to_end"]
        assert e2e["total_ms"] >= e2e["infer_ms"] > 0 and e2e["network_ms"] > 0
        assert result["peak_rss_mb"] > 0
    reference, model_torch, model_onnx = results
    assert model_onnx["photos"][0]["gflops"] == model_torch["photos"][0]["gflops"]  # one network, counted once
    assert reference["photos"][0]["gflops"] > model_torch["photos"][0]["gflops"]  # U-Net/ResNet-34 is heavier
    assert report["speedup"]["backend"] in ("torch", "onnx")
    assert set(report["speedup"]) >= {"latency_p50_64x64", "latency_p50_96x72", "throughput_b2"}

    table = md.read_text()
    assert report["command"] in table and report["machine"]["cpu"] in table
    assert table.count("| reference: unet/resnet34 | torch |") == 3  # two photo rows, one throughput row


def test_benchmark_times_a_test_time_configuration_of_an_ensemble(tiny_model, tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    models = f"{tiny_model},{tiny_model}"
    args = ["benchmark", "--model", models, "--quick", "--threads", "1", "--input-size", "64,96", "--tta",
            "--crop", "car", "--out", str(out), "--md", str(md)]  # fmt: skip
    assert main(args) == 0

    report = json.loads(out.read_text())
    assert report["command"].endswith("--input-size 64,96 --tta --crop car")
    assert [r["model_id"] for r in report["results"][1:]] == [report["results"][1]["model_id"]] * 2  # the first
    config = report["config"]
    assert config["models"] == 2 and config["input_size"] == [64, 96] and config["tta"] is True
    assert config["crop"] == "car" and "flip TTA on, crop car (9 network runs per photo)" in md.read_text()
    assert config["network_runs_per_photo"] == 9  # one finder pass (one model, shared) + 2 x 2 sizes x (photo + mirror)
    assert [(r["backend"], r["photo"]) for r in config["rows"]] == [
        ("torch", "64x64"), ("torch", "96x72"), ("onnx", "64x64"), ("onnx", "96x72")
    ]  # fmt: skip
    reference = {row["photo"]: row["latency"]["p50_ms"] for row in report["results"][0]["photos"]}
    for row in config["rows"]:
        assert 0 < row["latency"]["p50_ms"] <= row["latency"]["p95_ms"]
        expected = reference[row["photo"]] / row["latency"]["p50_ms"]
        assert row["speedup_over_reference"] == pytest.approx(expected, abs=0.006)
    table = md.read_text()
    assert "## Test-time configuration: 2 model(s) at input size 64, 96, flip TTA on, crop car (9 network runs" in table
    assert table.count("\n| onnx | 96x72 |") == 1  # its own row in the configuration table


def test_plain_benchmark_has_no_configuration_section(tiny_model, tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["benchmark", "--model", str(tiny_model), "--quick", "--out", str(out), "--md", str(md)]) == 0
    assert "config" not in json.loads(out.read_text()) and "Test-time configuration" not in md.read_text()


def test_a_configuration_without_input_sizes_states_the_models_own(tiny_model, tmp_path):
    from carparts.models import load_info

    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["benchmark", "--model", str(tiny_model), "--quick", "--threads", "1", "--tta",
                 "--out", str(out), "--md", str(md)]) == 0  # fmt: skip
    own = load_info(tiny_model).input_size
    assert json.loads(out.read_text())["config"]["input_size"] == [own]
    assert f"1 model(s) at input size {own}, flip TTA on (2 network runs per photo)" in md.read_text()
