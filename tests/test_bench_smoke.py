"""The engine benchmark runs end to end on a tiny checkpoint, so it cannot rot between real runs.

Only the structure of the report is checked, never a speed: timings on shared CPUs mean nothing in a test.
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_engine.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_reports_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = load_bench().main(["--quick", "--json", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    single = result["single_stream"]
    assert single["engine_tokens_per_s"] > 0 and single["transformers_tokens_per_s"] > 0 and single["ratio"] > 0
    levels = result["concurrency"]["levels"]
    assert list(levels) == ["1", "4"] and levels["1"]["ratio_to_1"] == pytest.approx(1.0)
    assert all(v["tokens_per_s"] > 0 for v in levels.values())
    assert set(result["images"]["modes"]) == {"none", "plain", "text_image"}
    assert result["images"]["image_tokens"] == 16
    ttft = result["ttft"]
    assert len(ttft["loaded_samples"]) == ttft["probes"] and 0 < ttft["loaded_p50_s"] <= ttft["loaded_p95_s"]
    assert isinstance(result["targets"], dict) and result["targets"]

    table = capsys.readouterr().out
    assert "| metric | value | ratio |" in table and "engine / transformers" in table
