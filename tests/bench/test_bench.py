"""`slimsam bench` writes the JSON, markdown table and chart, with ratios to the reference."""
from __future__ import annotations

import json

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
