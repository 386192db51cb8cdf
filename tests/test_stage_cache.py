"""``cache_dir``: round stages shared between runs (``sgpo.pipeline.cache``)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_overrides  # noqa: E402
from sgpo.pipeline import cache  # noqa: E402


def test_a_fingerprint_reads_content_not_place(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    (model / "sub" / "config.json").write_text('{"a": 1}')
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(model, copy)
    assert cache.fingerprint(copy) == cache.fingerprint(model)
    # a byte changed anywhere, or a file renamed, is another model
    (copy / "sub" / "config.json").write_text('{"a": 2}')
    assert cache.fingerprint(copy) != cache.fingerprint(model)
    (copy / "sub" / "config.json").write_text('{"a": 1}')
    assert cache.fingerprint(copy) == cache.fingerprint(model)
    (copy / "weights.bin").rename(copy / "other.bin")
    assert cache.fingerprint(copy) != cache.fingerprint(model)
    with pytest.raises(FileNotFoundError, match="nothing to fingerprint"):
        cache.fingerprint(tmp_path / "missing")


def test_keys_change_with_every_input() -> None:
    base = cache.key("generate", policy="p", prompts=["a", "b"], generation={"temperature": 0.7})
    assert base == cache.key("generate", generation={"temperature": 0.7}, prompts=["a", "b"], policy="p")
    assert base != cache.key("annotate", policy="p", prompts=["a", "b"], generation={"temperature": 0.7})
    assert base != cache.key("generate", policy="q", prompts=["a", "b"], generation={"temperature": 0.7})
    assert base != cache.key("generate", policy="p", prompts=["b", "a"], generation={"temperature": 0.7})
    assert base != cache.key("generate", policy="p", prompts=["a", "b"], generation={"temperature": 0.8})


def test_store_then_fetch_and_the_misses(tmp_path: Path) -> None:
    stages = cache.StageCache(tmp_path / "cache")
    made = tmp_path / "made"
    made.mkdir()
    (made / "counts.json").write_text("{}")
    (made / "out.jsonl").write_text('{"x": 1}\n')
    into = tmp_path / "into"
    assert not stages.fetch("e1", into, ["counts.json", "out.jsonl"])
    stages.store("e1", made, ["counts.json", "out.jsonl"])
    assert stages.fetch("e1", into, ["counts.json", "out.jsonl"])
    assert (into / "out.jsonl").read_text() == '{"x": 1}\n'
    # an entry without every asked-for file is a miss that copies nothing
    assert not stages.fetch("e1", tmp_path / "other", ["counts.json", "absent.json"])
    assert not (tmp_path / "other").exists()
    # the first run to store an entry keeps it; no staging directory is left behind
    (made / "out.jsonl").write_text('{"x": 2}\n')
    stages.store("e1", made, ["counts.json", "out.jsonl"])
    assert (tmp_path / "cache" / "e1" / "out.jsonl").read_text() == '{"x": 1}\n'
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["e1"]
    off = cache.StageCache(None)
    off.store("e1", made, ["out.jsonl"])
    assert not off.fetch("e1", into, ["out.jsonl"])


def _round(out: Path, t: int) -> dict[str, Any]:
    return json.loads((out / f"round_{t}" / "metrics.json").read_text())


def test_runs_sharing_a_cache_dir_sample_and_judge_a_shared_round_once(
    tmp_path: Path,
    tiny_model_dir: Path,
    preference_files: dict[str, Path],
    ssapo_run: Path,
    single_thread: Any,
) -> None:
    from sgpo.pipeline import load_config, run

    shared = f"cache_dir={tmp_path / 'cache'}"

    def go(name: str, *extra: str) -> Path:
        out = tmp_path / name
        run(load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, out, *extra)))
        return out

    first = go("first", shared)
    # storing changes nothing: the first run trains what a run without a cache trains
    final = "round_2/checkpoint"
    assert cache.fingerprint(first / final) == cache.fingerprint(ssapo_run / final)
    assert all("cached" not in _round(first, t) for t in range(3))

    # epsilon 0 starts round 1 from the same round 0 (the seed's DPO), so it copies that round's samples and labels
    zero = go("zero", shared, "follower.epsilon=0")
    assert _round(zero, 1)["cached"] == ["generate", "annotate"]
    for name in ("generations.jsonl", "annotations.jsonl"):
        assert (zero / "round_1" / name).read_bytes() == (first / "round_1" / name).read_bytes()
    # its round 1 trains other weights, so round 2 starts from another policy and misses
    one = cache.fingerprint(zero / "round_1" / "checkpoint")
    assert one != cache.fingerprint(first / "round_1" / "checkpoint")
    assert "cached" not in _round(zero, 2)
    # and what it trains is what the same run trains without a cache
    alone = go("alone", "follower.epsilon=0")
    for t in (1, 2):
        assert cache.fingerprint(zero / f"round_{t}" / "checkpoint") == cache.fingerprint(
            alone / f"round_{t}" / "checkpoint"
        )

    # another annotator reuses the samples, not the labels
    mean = go("mean", shared, "judge.options.reward=mean", "rounds=1")
    assert _round(mean, 1)["cached"] == ["generate"]
    # another sampling temperature reuses nothing
    warm = go("warm", shared, "generation.temperature=0.9", "rounds=1")
    assert "cached" not in _round(warm, 1)


def test_an_evaluation_is_shared_by_checkpoints_with_the_same_files(tmp_path: Path, tiny_model_dir: Path) -> None:
    from sgpo.responses import EvalSettings, _fingerprint

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    settings = EvalSettings()
    assert _fingerprint(str(copy), ["p"], settings) == _fingerprint(str(tiny_model_dir), ["p"], settings)
    assert _fingerprint(str(copy), ["q"], settings) != _fingerprint(str(tiny_model_dir), ["p"], settings)


def test_a_judge_is_known_by_its_code_and_the_files_its_options_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "cache_test_judge.py"
    module.write_text("class Judge:\n    def __init__(self, weights=None):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"one")
    name = "cache_test_judge:Judge"
    before = cache.judge_identity(name, {"weights": str(weights)})
    assert before == cache.judge_identity(name, {"weights": str(weights)})
    # retrained weights at the same path, or an edited class, are another judge
    weights.write_bytes(b"two")
    assert cache.judge_identity(name, {"weights": str(weights)}) != before
    weights.write_bytes(b"one")
    module.write_text(module.read_text() + "# edited\n")
    assert cache.judge_identity(name, {"weights": str(weights)}) != before
    # options that are not paths are compared as values
    assert cache.judge_identity("implicit_reward", {"reward": "mean"}) != cache.judge_identity("implicit_reward", {})


def test_a_run_without_a_cache_never_keys_a_stage(
    tmp_path: Path,
    tiny_model_dir: Path,
    preference_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    single_thread: Any,
) -> None:
    from sgpo.pipeline import load_config, run

    # keying reads every file a judge's options name (a reward model's weights): off, it must cost nothing
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a stage was keyed without a cache_dir")

    monkeypatch.setattr(cache, "judge_identity", refuse)
    monkeypatch.setattr(cache, "key", refuse)
    out = tmp_path / "plain"
    run(load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, out, "rounds=1")))
    assert (out / "round_1" / "annotations.jsonl").is_file()


def test_a_stage_copies_from_the_cache_stores_once_and_drops_stale_parts(tmp_path: Path) -> None:
    from sgpo.pipeline import config_from_dict
    from sgpo.pipeline.context import RunContext

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")

    def context(name: str) -> RunContext:
        cfg = config_from_dict({"output_dir": str(tmp_path / name), "cache_dir": str(tmp_path / "cache")})
        ctx = RunContext(cfg)
        ctx.base_path = str(base)
        return ctx

    def outputs(ctx: RunContext) -> list[Path]:
        return [ctx.round_dir(1) / "counts.json", ctx.round_dir(1) / "out.jsonl"]

    first = context("first")
    parts = first.round_dir(1) / "x_parts"
    with pytest.raises(RuntimeError, match="killed"), first.stage(outputs(first), parts=parts, shared_as="x", t=1):
        parts.mkdir(parents=True)
        raise RuntimeError("killed")
    # a stage that failed keeps its parts and stores nothing
    assert parts.is_dir() and not (tmp_path / "cache").exists()
    with first.stage(outputs(first), parts=parts, shared_as="x", t=1, inputs=lambda: {"k": 1}) as done:
        assert not done
        for path, text in zip(outputs(first), ("{}", '{"a": 1}\n'), strict=True):
            path.write_text(text)
    assert not parts.exists() and len(list((tmp_path / "cache").iterdir())) == 1
    # the same stage of another run with the same inputs is copied, byte for byte; other inputs miss
    second = context("second")
    with second.stage(outputs(second), shared_as="x", t=1, inputs=lambda: {"k": 1}) as done:
        assert done
    assert second.cached == ["x"] and outputs(second)[1].read_text() == '{"a": 1}\n'
    third = context("third")
    with third.stage(outputs(third), shared_as="x", t=1, inputs=lambda: {"k": 2}) as done:
        assert not done and not outputs(third)[1].exists()
        third.round_dir(1).mkdir(parents=True)
        for path in outputs(third):
            path.write_text("{}")
    assert third.cached == [] and len(list((tmp_path / "cache").iterdir())) == 2
    # a done stage drops the parts a kill left between its output and their removal
    parts.mkdir()
    with first.stage(outputs(first), parts=parts) as done:
        assert done
    assert not parts.exists()
