"""scripts/gpu_check.py: its CPU mode runs every section, so the check cannot rot while no GPU is at hand."""
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402

SECTIONS = ["environment", "correctness", "real_loop", "sft_varying_lengths", "bench", "decode", "projection", "grpo"]


def test_every_section_runs_on_cpu(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["sections"]) == SECTIONS
    sections = report["sections"]
    assert all(s["status"] == "ok" for s in sections.values()), {n: s["status"] for n, s in sections.items()}
    step = sections["correctness"]["training_step"]
    assert step["all_finite"] and step["grad_max_rel_diff"] < 1e-3
    assert sections["correctness"]["kv_cache_decode_fp32"]["max_abs_logit_diff"] < 1e-4
    assert sections["sft_varying_lengths"]["compiled_graphs"] == 1
    assert all(r["tokens_per_s"] > 0 for r in sections["real_loop"]["runs"].values())
    assert sections["projection"]["epoch_minutes_here"] > 0 and sections["decode"]["identical_tokens"]


def test_a_failing_section_is_recorded_at_once_and_the_next_still_runs(tmp_path):
    import argparse
    check = gpu_check.Check(argparse.Namespace(out=str(tmp_path), device="cpu", quick=True, budget_s=100))

    def broken():
        raise RuntimeError("no kernel image is available")
    check.run("first", broken)
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert on_disk["first"]["status"] == "failed: RuntimeError: no kernel image is available"
    check.run("second", lambda: {"figure": 1.5})
    check.run("third", lambda: {}, needs_s=1000)
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert on_disk["second"]["status"] == "ok" and on_disk["second"]["figure"] == 1.5
    assert on_disk["third"]["status"].startswith("skipped")
