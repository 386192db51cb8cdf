"""benchmarks/scale_estimate.py: its formulas against hand computations, and docs/scale.md showing its output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import scale_estimate as est
from sgpo.pipeline import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "scale.md"


@pytest.fixture(scope="module")
def cfg():
    return load_config(est.RECIPE)


def test_the_page_shows_the_scripts_output_byte_for_byte(cfg, capsys) -> None:
    assert est.main([]) == 0
    printed = capsys.readouterr().out
    assert printed == est.render(cfg, 8)
    assert printed in PAGE.read_text(), "docs/scale.md: paste the output of python benchmarks/scale_estimate.py"
    assert "python benchmarks/scale_estimate.py" in PAGE.read_text()


def test_training_flops_and_kv_cache_by_hand() -> None:
    # 8 N per token with gradient checkpointing (forward, recomputed forward, backward), 6 N without
    assert est.train_flops(1000) == 8 * 7.24e9 * 1000 == 5.792e13
    assert est.train_flops(1000, checkpointing=False) == 4.344e13
    # keys and values, 32 layers, 8 KV heads of 128, 2 bytes: 128 KiB per token
    assert est.KV_PER_TOKEN == 131072


def test_model_states_divide_over_the_gpus_as_each_engine_divides_them(cfg) -> None:
    def grows(engine: str) -> float:
        return est.update_memory(cfg, engine, 8) - est.update_memory(cfg, engine, 16)

    # ZeRO-3 and FSDP2 shard all 16 bytes a parameter holds, ZeRO-2 all but the bf16 weights, DDP nothing
    assert grows("ZeRO-3") == pytest.approx(16 * est.PARAMS * (1 / 8 - 1 / 16))
    assert grows("ZeRO-2") == pytest.approx(14 * est.PARAMS * (1 / 8 - 1 / 16))
    assert grows("DDP") == 0
    # on 8 GPUs ZeRO-3's states are 16 N / 8 = 14.48 GB, beside the SFT model, activations and overhead
    states = est.update_memory(cfg, "ZeRO-3", 8) - est.WEIGHTS - est.S["OVERHEAD_GB"] * est.GB
    tokens = 2 * 2 * 1024
    activations = 32 * 4096 * 2 * tokens + 34 * 4096 * tokens
    assert states == pytest.approx(14.48e9 + 2e9 + activations)
    # FSDP2's peak on few GPUs is its sharded states; on 8, accelerate's float32 copy of the whole model
    assert est.update_memory(cfg, "FSDP2", 8) == pytest.approx(4 * est.PARAMS + est.WEIGHTS + 3e9)
    assert est.update_memory(cfg, "FSDP2", 2) > 4 * est.PARAMS + est.WEIGHTS + 3e9


def test_times_scale_with_the_work_and_the_gpus(cfg) -> None:
    # training is compute-bound here: half the GPUs, twice the time; three epochs, three times the time
    assert est.update_seconds(cfg, 30_000, 1, "ZeRO-3", 4, False) == pytest.approx(
        2 * est.update_seconds(cfg, 30_000, 1, "ZeRO-3", 8, False)
    )
    three = est.update_seconds(cfg, 2_000, 3, "ZeRO-3", 8, False)
    assert three == pytest.approx(3 * est.update_seconds(cfg, 2_000, 1, "ZeRO-3", 8, False))
    # by hand: 30,000 packed pairs of 200 + 2 x 300 tokens, 8 N FLOPs each, on 8 GPUs at 35% of 989 TFLOP/s
    assert est.update_seconds(cfg, 30_000, 1, "ZeRO-3", 8, False) == pytest.approx(
        8 * 7.24e9 * 30_000 * 800 / (8 * 989e12 * 0.35)
    )
    # vLLM runs on the main process only: more GPUs do not speed it up; transformers' generate spreads over them
    assert est.estimate(cfg, 16)[1][3] == est.estimate(cfg, 8)[1][3]
    assert est.estimate(cfg, 16)[0][3][3] < 0.6 * est.estimate(cfg, 8)[0][3][3]
    # the recipe's settings drive the estimate: twice the new tokens, about twice the decode time
    longer = load_config(est.RECIPE, ["generation.max_new_tokens=600"])
    ratio = est.estimate(longer, 8)[0][3][3] / est.estimate(cfg, 8)[0][3][3]
    assert 1.9 < ratio < 2.3


def test_the_follower_is_interpolated_through_its_measured_times() -> None:
    for n, ms in est.FOLLOWER_MS.items():
        assert est.follower_seconds(n) == pytest.approx(ms / 1e3)
    times = [est.follower_seconds(n) for n in (1_000, 2_000, 8_000, 30_000, 60_000, 3_000_000, 20_000_000)]
    assert times == sorted(times)
    assert est.FOLLOWER_MS[2_000] / 1e3 < est.follower_seconds(30_000) < est.FOLLOWER_MS[60_000] / 1e3


def test_the_calibration_is_what_the_performance_page_measured() -> None:
    """The follower rows of docs/performance.md (probability space, max_shift 0.01): sgpo cpu and the paper's SLSQP."""
    rows = {}
    for line in (ROOT / "docs" / "performance.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 6 and cells[:2] == ["probability", "0.01"]:
            rows[int(cells[2].replace(",", ""))] = cells
    for n, ms in est.FOLLOWER_MS.items():
        assert rows[n][4] == f"{ms:g} ms", f"docs/performance.md measures {rows[n][4]} at n = {n}: rerun the estimate"
    paper = re.match(r"([\d.]+) s", rows[2_000][7])
    assert paper and float(paper.group(1)) / (2_000 / 100) == est.S["PAPER_S"]


def test_a_stage_that_does_not_fit_shows_no_time(cfg) -> None:
    ddp = next(line for line in est.render(cfg, 8).splitlines() if line.startswith("| update, DDP"))
    assert "does not fit" in ddp and ddp.endswith("| - | - | - | - | - |")
    assert "does not fit" not in est.render(cfg, 8).replace(ddp, "")
