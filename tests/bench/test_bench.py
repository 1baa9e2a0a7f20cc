"""`slimsam bench` writes the JSON, markdown table and chart, with ratios to the reference."""
from __future__ import annotations

import json
import shutil

import pytest

from slimsam.cli.main import main

REQUIRED_KEYS = {"name", "attention", "encoder_ms_median", "decode_ms_median", "params", "macs",
                 "throughput_images_per_s", "peak_memory_mb", "speedup_vs_reference", "macs_ratio_vs_reference"}


def test_bench_cli_writes_json_markdown_and_chart(tmp_path, tiny_model_dir, capsys):
    paths = {"json": tmp_path / "bench.json", "markdown": tmp_path / "bench.md", "chart": tmp_path / "bench.png"}
    # --budget 0: the 3 repeats asked for stop at the minimum of 2.
    code = main(["bench", "tiny", "--random-weights", "--attention", "both", "--repeats", "3", "--budget", "0",
                 "--batch", "2", "--decode-repeats", "2", "--device", "cpu", "--threads", "1"] +
                [f"--{key}={path}" for key, path in paths.items()])
    assert code == 0
    data = json.loads(paths["json"].read_text())
    stock, fast = data["models"]
    assert (stock["attention"], fast["attention"]) == ("stock", "fast")
    for row in (stock, fast):
        assert REQUIRED_KEYS <= set(row)
        assert row["encoder_ms_median"] > 0 and row["decode_ms_median"] > 0 and row["params"] > 100_000
        assert len(row["encoder_ms_runs"]) == 2 and row["macs"] > 0
    assert stock["speedup_vs_reference"] == fast["speedup_vs_reference"] == 1.0  # each to its own attention
    assert fast["max_abs_diff_vs_stock"] < 1e-4 * fast["extra"]["stock_embedding_max_abs"]
    # fast rows decode clicks with slimsam.infer.fast_decoder, checked against SamModel's decoder
    assert fast["decode_max_abs_diff_vs_stock"] < 1e-4 * fast["extra"]["stock_mask_logits_max_abs"]
    assert stock["decode_max_abs_diff_vs_stock"] is None
    assert data["machine"]["torch_threads"] == 1 and data["reference"] == "tiny"
    table = paths["markdown"].read_text()
    assert table in capsys.readouterr().out and table.count("| tiny |") == 2
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_rejects_unknown_random_config(capsys):
    assert main(["bench", "sam-xl", "--random-weights"]) == 2
    assert "--random-weights needs names from" in capsys.readouterr().err


def test_bench_compiles_only_fast_rows_when_asked(monkeypatch):
    """--compile: the fast rows' encoders go through slimsam.model.compiled (stubbed: compiling is the slow part,
    covered in test_compiled.py), the stock rows stay as transformers gives them."""
    from slimsam.bench import speed as bench

    compiled = []
    monkeypatch.setattr(bench, "compile_encoder", lambda model: compiled.append(model) or model)
    settings = bench.BenchSettings(repeats=1, batch=0, decode_repeats=0, compile=True)
    results = bench.benchmark_models(["tiny"], settings, random_weights=True, attentions=bench.ATTENTIONS,
                                     log=lambda message: None)
    assert [(r.attention, r.compiled) for r in results] == [("stock", False), ("fast", True)]
    assert len(compiled) == 1 and "fast, compiled" in bench.markdown_table(results, "tiny")


def test_one_run_lists_pytorch_and_onnxruntime_rows(tiny_onnx_export, tmp_path, capsys):
    """An ONNX export folder runs on onnxruntime, its variants beside the PyTorch dtypes, each compared with its
    model's fp32 row."""
    folder, _ = tiny_onnx_export
    code = main(["bench", "tiny", str(folder), "--random-weights", "--dtype", "fp32", "bf16", "int8",
                 "--repeats", "2", "--batch", "2", "--decode-repeats", "2", "--threads", "1",
                 "--json", str(tmp_path / "bench.json")])
    assert code == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["models"]
    assert [(r["name"], r["runtime"], r["dtype"]) for r in rows] == [
        ("tiny", "pytorch", "fp32"), ("tiny", "pytorch", "bf16"),
        (str(folder), "onnxruntime", "fp32"), (str(folder), "onnxruntime", "int8")]
    torch_fp32, torch_bf16, onnx_fp32, onnx_int8 = rows
    assert all(r["encoder_ms_median"] > 0 and r["decode_ms_median"] > 0 for r in rows)
    assert onnx_fp32["params"] == torch_fp32["params"] and onnx_fp32["macs"] == torch_fp32["macs"]  # from the report
    assert torch_fp32["mask_iou_vs_fp32"] is None and onnx_fp32["mask_iou_vs_fp32"] is None  # the baselines
    for row in (torch_bf16, onnx_int8):
        assert 0 < row["embedding_max_abs_diff_vs_fp32"] and 0 < row["mask_iou_vs_fp32"] <= 1
    assert onnx_int8["speedup_vs_reference"] is None  # the reference (tiny) has no onnxruntime int8 row
    table = capsys.readouterr().out
    assert "| pytorch bf16 |" in table and "| onnxruntime int8 |" in table
    machine = json.loads((tmp_path / "bench.json").read_text())["machine"]
    assert machine["cpu_model"] and isinstance(machine["cpu_flags"], list)


def test_a_model_is_exported_on_the_fly_for_onnxruntime(tiny_onnx_export, monkeypatch):
    """--runtime onnxruntime exports the model to a temporary folder (stubbed with the session's export of the very
    same tiny model: exporting takes a minute, tests/deploy covers it); the rows then agree with PyTorch's."""
    from slimsam.bench import speed as bench

    exports = []

    def export(model, processor, folder, quantize, log_progress):
        exports.append(list(quantize))
        shutil.copytree(tiny_onnx_export[0], folder)
        return json.loads((folder / "export_report.json").read_text())

    monkeypatch.setattr(bench, "export_onnx", export)
    settings = bench.BenchSettings(repeats=2, batch=0, decode_repeats=2, dtypes=("fp32", "int8"),
                                   runtimes=("pytorch", "onnxruntime"))
    lines = []
    results = bench.benchmark_models(["tiny"], settings, random_weights=True, log=lines.append)
    assert exports == [["none", "int8"]]
    assert any(line.startswith("tiny: exported; against PyTorch: fp32: relative difference") for line in lines)
    assert [(r.runtime, r.dtype) for r in results] == [("pytorch", "fp32"), ("onnxruntime", "fp32"),
                                                        ("onnxruntime", "int8")]
    onnx_fp32 = results[1]
    assert onnx_fp32.embedding_max_abs_diff_vs_fp32 < 1e-4 and onnx_fp32.mask_iou_vs_fp32 > 0.99
    assert onnx_fp32.speedup_vs_reference == 1.0 and results[2].mask_iou_vs_fp32 < 1


def test_a_model_whose_export_fails_gets_pytorch_rows_and_the_reason(monkeypatch):
    from slimsam.bench import speed as bench

    def refuse(*args, **kwargs):
        raise bench.ExportError("the fp32 ONNX graphs differ from PyTorch")

    monkeypatch.setattr(bench, "export_onnx", refuse)
    lines = []
    settings = bench.BenchSettings(repeats=1, batch=0, decode_repeats=0, runtimes=("pytorch", "onnxruntime"))
    results = bench.benchmark_models(["tiny"], settings, random_weights=True, log=lines.append)
    assert [r.runtime for r in results] == ["pytorch"]
    assert any("no onnxruntime rows: the fp32 ONNX graphs differ" in line for line in lines)


def test_interleaved_rows_are_timed_in_rotating_rounds(tiny_onnx_export, monkeypatch, tmp_path):
    """--interleave: every row is held at once and each round times one encoder run and the clicks of every row,
    the order rotated by one each round; speed-ups are medians of the per-round ratios."""
    from slimsam.bench import speed as bench

    clicked = []  # the predictor (one per row) of each timed batch of clicks
    time_decode = bench.time_decode
    monkeypatch.setattr(bench, "time_decode", lambda predictor, repeats, rng: clicked.append(predictor)
                        or time_decode(predictor, repeats, rng))
    folder, _ = tiny_onnx_export
    code = main(["bench", "tiny", str(folder), "--random-weights", "--interleave", "--attention", "both",
                 "--dtype", "fp32", "int8", "--repeats", "3", "--batch", "0", "--decode-repeats", "3",
                 "--threads", "1", "--json", str(tmp_path / "bench.json")])
    assert code == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["models"]
    assert [(r["runtime"], r["dtype"], r["attention"]) for r in rows] == [
        ("pytorch", "fp32", "stock"), ("pytorch", "fp32", "fast"), ("onnxruntime", "fp32", "stock"),
        ("onnxruntime", "int8", "stock")]
    predictors = list(dict.fromkeys(clicked))  # in the first round's order
    assert [p.runtime for p in predictors] == ["pytorch", "pytorch", "onnxruntime", "onnxruntime"]
    assert [predictors.index(p) for p in clicked] == [0, 1, 2, 3, 1, 2, 3, 0, 2, 3, 0, 1]  # 3 rounds, 1 click each
    stock, fast, onnx_fp32, onnx_int8 = rows
    assert all(len(r["encoder_ms_runs"]) == 3 for r in rows)
    for row, base in ((fast, stock), (onnx_int8, onnx_fp32)):  # each model's first fp32 row is its baseline
        per_round = sorted(a / b for a, b in zip(base["encoder_ms_runs"], row["encoder_ms_runs"]))
        assert row["speedup_vs_fp32"] == pytest.approx(per_round[1])
    assert 0 < onnx_int8["mask_iou_vs_fp32"] <= 1 and fast["mask_iou_vs_fp32"] > 0.99
    # the stock row kept transformers' attention while the fast one was swapped into the model: a copy
    assert 0 < fast["max_abs_diff_vs_stock"] < 1e-4 * fast["extra"]["stock_embedding_max_abs"]


def test_a_dtype_no_runtime_has_is_one_error_line(tiny_onnx_export, capsys):
    code = main(["bench", str(tiny_onnx_export[0]), "--dtype", "bf16", "--decode-repeats", "0", "--batch", "0"])
    assert code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith("slimsam: error: nothing to")


def test_a_folder_with_graphs_but_no_config_is_one_error_line(tiny_onnx_export, tmp_path, capsys):
    """A folder that looks like an export (its onnx/ graphs) but is not a whole one: refused, not a traceback."""
    shutil.copytree(tiny_onnx_export[0] / "onnx", tmp_path / "broken" / "onnx")
    code = main(["bench", str(tmp_path / "broken"), "--decode-repeats", "0", "--batch", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("slimsam: error:") and "no config.json" in err[-1]
