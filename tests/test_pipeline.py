"""``sgpo run`` end to end on the tiny model: SSAPO, SPPO and offline DPO, the run files, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

import sgpo  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import tiny_overrides  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from sgpo.pipeline import load_config, run  # noqa: E402
from sgpo.pipeline.judges import ScoreJudge, build_judge  # noqa: E402
from sgpo.pipeline.leader import LossSpec, global_batches, local_part, pair_losses, spa_smoothing  # noqa: E402


class VowelJudge(ScoreJudge):
    """A deterministic test judge: the share of vowels in a response."""

    name = "vowels"

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def scores(self, prompts: Any, responses: Any) -> np.ndarray:
        return np.array([10 * sum(c in "aeiou" for c in r) / (1 + len(r)) for r in responses])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def response_logps(model: Any, tokenizer: Any, prompt: Any, response: str) -> float:
    """log pi(response + EOS | templated prompt), computed directly from the model's logits."""
    from sgpo.generation import format_prompt

    prompt_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logprobs = F.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    targets = ids[0, len(prompt_ids) :]
    return float(logprobs[len(prompt_ids) - 1 : -1].gather(-1, targets[:, None]).sum())


def test_ssapo_run_files_and_report(ssapo_run: Path) -> None:
    report = json.loads((ssapo_run / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    summary = (ssapo_run / "report.md").read_text()
    assert summary.startswith("# sgpo run: ssapo")
    # the plots sgpo eval draws for a run directory, embedded and on disk; no evaluation ran, so no win-rate plot
    for plot in ("margins.png", "follower.png"):
        assert f"]({plot})" in summary and (ssapo_run / plot).stat().st_size > 1000
    assert "win_rate.png" not in summary
    steps = read_jsonl(ssapo_run / "metrics.jsonl")
    assert [s["global_step"] for s in steps] == list(range(1, len(steps) + 1))
    for t in (1, 2):
        d = ssapo_run / f"round_{t}"
        for name in ("prompts.jsonl", "generations.jsonl", "annotations.jsonl", "worst_case.json", "metrics.json"):
            assert (d / name).is_file(), name
        assert (d / "checkpoint" / "adapter_model.safetensors").is_file()
        assert not list(d.glob("*_parts")) and not list(d.glob(".*"))
        generations = read_jsonl(d / "generations.jsonl")
        assert len(generations) == 6 and all(len(g["responses"]) == 2 for g in generations)
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["train"]["steps"] == math.ceil(metrics["train"]["pairs"] / 4)
        assert all(math.isfinite(s["loss"]) for s in steps if s["round"] == t)
        follower = json.loads((d / "worst_case.json").read_text())
        for s in steps:
            if s["round"] == t:
                assert s["follower_mass_moved"] == follower["mass_moved"]
                assert s["follower_value"] == pytest.approx(np.mean(follower["value"]))


def test_worst_case_is_the_followers_answer_on_the_annotated_margins(ssapo_run: Path) -> None:
    cfg = load_config("tiny")
    for t in (1, 2):
        d = ssapo_run / f"round_{t}"
        margins = np.array([p["margin"] for p in read_jsonl(d / "annotations.jsonl")])
        saved = load_file(str(d / "worst_case.safetensors"))
        # probability space: xi = sigmoid(gamma * h) (DESIGN 1.2)
        np.testing.assert_allclose(saved["xi"], 1 / (1 + np.exp(-cfg.follower.gamma * margins)), rtol=1e-12)
        expected = sgpo.worst_case(saved["xi"], cfg.follower.epsilon, pieces=cfg.follower.pieces, max_shift="epsilon")
        np.testing.assert_allclose(saved["weights"], expected.weights, atol=1e-12)
        np.testing.assert_allclose(saved["shifts"], expected.shifts, atol=1e-12)
        np.testing.assert_allclose(saved["weights"].sum(1), 1.0, atol=1e-9)
        summary = json.loads((d / "worst_case.json").read_text())
        assert summary["transport"] <= cfg.follower.epsilon + 1e-9
        assert 0 < summary["mass_moved"] <= 1


def test_self_annotation_is_the_implicit_reward_of_pi_t_against_sft(ssapo_run: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from sgpo.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    sft = load_model(tiny_model_dir).eval()
    policy = PeftModel.from_pretrained(load_model(tiny_model_dir), str(ssapo_run / "round_0" / "checkpoint")).eval()
    pairs = read_jsonl(ssapo_run / "round_1" / "annotations.jsonl")
    generations = read_jsonl(ssapo_run / "round_1" / "generations.jsonl")
    assert len(pairs) == len(generations)
    for pair, gen in zip(pairs, generations, strict=True):
        assert {pair["chosen"], pair["rejected"]} == set(gen["responses"])
        r = [
            response_logps(policy, tokenizer, pair["prompt"], y) - response_logps(sft, tokenizer, pair["prompt"], y)
            for y in (pair["chosen"], pair["rejected"])
        ]
        assert r[0] >= r[1]
        assert pair["margin"] == pytest.approx(r[0] - r[1], abs=1e-4)
        # pi_t is the leader's reference too: its log-probs are kept with the pair and reused
        assert pair["ref_chosen_logps"] == pytest.approx(
            response_logps(policy, tokenizer, pair["prompt"], pair["chosen"]), abs=1e-4
        )
    assert any(p["margin"] > 1e-6 for p in pairs)


def test_finished_run_redoes_nothing(ssapo_run: Path, tiny_model_dir: Path, preference_files: dict[str, Path]) -> None:
    # the summary (report.*, its plots, metrics.jsonl) is rewritten on every call; every stage's files stay untouched
    summary = ("report.json", "report.md", "metrics.jsonl", "margins.png", "follower.png", "win_rate.png")
    stamps = {
        p: p.stat().st_mtime_ns
        for p in ssapo_run.rglob("*")
        if p.is_file() and not (p.parent == ssapo_run and p.name in summary)
    }
    again = run(load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, ssapo_run)))
    assert [r["round"] for r in again["rounds"]] == [0, 1, 2]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_different_config_is_refused_in_the_same_output_dir(
    ssapo_run: Path, tiny_model_dir: Path, preference_files: dict[str, Path]
) -> None:
    cfg = load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, ssapo_run, "train.beta=0.2"))
    with pytest.raises(ValueError, match=r"output_dir: .* different config \(first difference at train.beta"):
        run(cfg)


def test_sppo_run_with_a_pluggable_judge(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], single_thread: None
) -> None:
    overrides = tiny_overrides(
        tiny_model_dir,
        preference_files,
        tmp_path / "sppo",
        "method=sppo",
        "rounds=1",
        "train.loss_type=sppo",
        "round0.enabled=false",
        "generation.num_samples=3",
        "judge.name=test_pipeline:VowelJudge",
        "judge.options.temperature=0.5",
    )
    report = run(load_config("tiny", overrides))
    assert [r["round"] for r in report["rounds"]] == [1]
    assert not (tmp_path / "sppo" / "round_0").exists()
    judge = VowelJudge(temperature=0.5)
    for pair in read_jsonl(tmp_path / "sppo" / "round_1" / "annotations.jsonl"):
        probs = np.array(pair["win_probs"])
        # Bradley-Terry win probabilities over K responses sum to K / 2
        assert probs.sum() == pytest.approx(1.5)
        assert pair["chosen_win_prob"] == pytest.approx(probs.max())
        assert pair["rejected_win_prob"] == pytest.approx(probs.min())
        s = judge.scores([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]])
        assert s[0] > s[1]


def test_sppo_after_a_dpo_round_0_on_the_seed_pairs(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], single_thread: None
) -> None:
    out = tmp_path / "sppo_r0"
    overrides = tiny_overrides(
        tiny_model_dir,
        preference_files,
        out,
        "method=sppo",
        "rounds=1",
        "train.loss_type=sppo",
        "judge.name=test_pipeline:VowelJudge",
    )
    report = run(load_config("tiny", overrides))
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    round0 = json.loads((out / "round_0" / "metrics.json").read_text())
    seed_pairs = read_jsonl(preference_files["pairs"])
    assert round0["train"]["pairs"] == len(seed_pairs)
    assert (out / "round_0" / "checkpoint" / "adapter_model.safetensors").is_file()
    # round 1 samples from round 0's policy: its margins are measured against the starting model, so they are not 0
    margins = [p["margin"] for p in read_jsonl(out / "round_1" / "annotations.jsonl")]
    assert any(abs(m) > 1e-6 for m in margins)


def test_paper_follower_backend_in_a_run(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], single_thread: None
) -> None:
    out = tmp_path / "paper"
    overrides = tiny_overrides(
        tiny_model_dir, preference_files, out, "rounds=1", "follower.backend=paper", "follower.max_shift=0.01"
    )
    run(load_config("tiny", overrides))
    summary = json.loads((out / "round_1" / "worst_case.json").read_text())
    assert summary["backend"] == "paper"
    saved = load_file(str(out / "round_1" / "worst_case.safetensors"))
    f = load_config("tiny").follower
    paper = sgpo.worst_case(saved["xi"], f.epsilon, pieces=f.pieces, max_shift=0.01, backend="paper")
    exact = sgpo.worst_case(saved["xi"], f.epsilon, pieces=f.pieces, max_shift=0.01)
    # SLSQP's iterates are reproducible to its own tolerance, not bit for bit
    np.testing.assert_allclose(saved["weights"], paper.weights, atol=1e-6)
    np.testing.assert_allclose(saved["shifts"], paper.shifts, atol=1e-6)
    assert np.abs(saved["shifts"] - exact.shifts).max() > 1e-4
    # the exact follower's worst case is at least as bad for the leader as the paper's
    assert float(np.sum(exact.value)) >= float(np.sum(paper.value)) - 1e-9


def test_offline_dpo_with_ipo(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], single_thread: None
) -> None:
    overrides = tiny_overrides(
        tiny_model_dir,
        preference_files,
        tmp_path / "dpo",
        "method=dpo",
        "rounds=0",
        "train.loss_type=ipo",
        "round0.loss_type=ipo",
        "round0.epochs=2",
        "model.lora=false",
    )
    report = run(load_config("tiny", overrides))
    (row,) = report["rounds"]
    assert row["pairs"] == 12
    steps = read_jsonl(tmp_path / "dpo" / "metrics.jsonl")
    assert len(steps) == 2 * math.ceil(12 / 4) and steps[-1]["epoch"] == 1
    checkpoint = tmp_path / "dpo" / "round_0" / "checkpoint"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "tokenizer.json").is_file()
    # full fine-tuning: the IPO loss falls over two epochs at lr 1e-3
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_bad_data_is_reported_before_any_model_loads(tmp_path: Path, preference_files: dict[str, Path]) -> None:
    missing = tmp_path / "missing-column.jsonl"
    missing.write_text(json.dumps({"prompt": "a", "good": "b", "rejected": "c"}) + "\n")
    empty = tmp_path / "empty-prompt.jsonl"
    empty.write_text(json.dumps({"prompt": "  ", "chosen": "b", "rejected": "c"}) + "\n")
    # a model path that does not exist shows the data errors are raised first, before loading
    base = ["model.name_or_path=/no/such/model", f"output_dir={tmp_path / 'out'}", "rounds=0", "logging.progress=false"]
    with pytest.raises(ValueError, match=r"data: .* has no column 'chosen'; its columns are prompt, good, rejected"):
        run(load_config("tiny", [*base, f"data.seed_pairs={missing}"]))
    with pytest.raises(ValueError, match=r"prompt: row 0 is an empty prompt"):
        run(load_config("tiny", [*base, f"data.seed_pairs={empty}"]))
    with pytest.raises(FileNotFoundError, match=r"data: /no/such/file.jsonl does not exist"):
        run(load_config("tiny", [*base, "data.seed_pairs=/no/such/file.jsonl"]))
    with pytest.raises(FileNotFoundError, match=r"model: '/no/such/model' is neither"):
        run(load_config("tiny", [*base, f"data.seed_pairs={preference_files['pairs']}"]))
    too_many = ["rounds=2", "data.prompts_per_round=[10, 10]", f"data.prompts={preference_files['prompts']}"]
    with pytest.raises(ValueError, match=r"data.prompts_per_round: rounds need \[10, 10\] prompts .* holds 16"):
        run(load_config("tiny", [*base, f"data.seed_pairs={preference_files['pairs']}", *too_many]))


def test_long_prompts_are_truncated_or_skipped_and_counted(tiny_model_dir: Path) -> None:
    from sgpo.generation import format_prompt
    from sgpo.models import load_tokenizer
    from sgpo.pipeline.config import DataConfig
    from sgpo.pipeline.data import fit_prompts

    tokenizer = load_tokenizer(tiny_model_dir)
    long = "word " * 40 + "THE QUESTION?"
    prompts = ["short one", long, [{"role": "user", "content": long}]]
    kept, indices, counts = fit_prompts(tokenizer, prompts, DataConfig(max_prompt_length=48), None)
    assert counts == {"prompts": 3, "truncated": 2, "skipped": 0} and indices == [0, 1, 2]
    for p in kept:
        assert len(tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) <= 48
    assert kept[1].endswith("THE QUESTION?") and kept[2][0]["content"] == kept[1]
    kept, indices, counts = fit_prompts(tokenizer, prompts, DataConfig(max_prompt_length=48, long_prompts="skip"), None)
    assert kept == ["short one"] and indices == [0] and counts["skipped"] == 2
    with pytest.raises(ValueError, match="data.max_prompt_length: 5 tokens cannot hold even the chat template"):
        fit_prompts(tokenizer, [long], DataConfig(max_prompt_length=5, max_length=10), None)


def test_judges_resolve_by_name_and_reject_bad_options() -> None:
    verifiable = build_judge("verifiable", {"temperature": 0.2}, None)
    assert callable(verifiable.scores) and callable(verifiable.win_probabilities)
    with pytest.raises(ValueError, match="judge.name: unknown judge 'oracle'"):
        build_judge("oracle", {}, None)
    with pytest.raises(ValueError, match="judge.name: cannot import 'no_such_module:Judge'"):
        build_judge("no_such_module:Judge", {}, None)
    with pytest.raises(ValueError, match="judge.options: .* do not fit VowelJudge"):
        build_judge("test_pipeline:VowelJudge", {"sharpness": 2}, None)
    with pytest.raises(ValueError, match="scores with the policy and cannot judge outside a run"):
        build_judge("implicit_reward", {}, None)


def test_a_judge_that_cannot_take_its_options_stops_the_run_before_a_model_loads(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sgpo.models
    from sgpo.pipeline.judges import check_judge_options

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sgpo.models, "load_model", no_model)
    monkeypatch.setattr(sgpo.models, "resolve_model", no_model)
    out = tmp_path / "run"
    # the hidden recipe's annotator options, kept when only the judge's name changes
    base = tiny_overrides(tiny_model_dir, preference_files, out, "judge.options={reward: mean}")
    with pytest.raises(
        ValueError, match=r"judge.options: \{'reward': 'mean'\} do not fit VowelJudge.*judge.options=\{\}"
    ):
        run(load_config("tiny", [*base, "judge.name=test_pipeline:VowelJudge"]))
    with pytest.raises(ValueError, match="evaluate.judge.options: .* do not fit "):
        run(load_config("tiny", [*base, "evaluate.judge.options={reward: mean}"]))
    # the options a judge takes, the pipeline context included, pass
    check_judge_options("implicit_reward", {"reward": "mean", "gate": "on_task"})
    check_judge_options("test_pipeline:VowelJudge", {})


def test_global_batches_split_over_processes_cover_each_pair_once() -> None:
    from sgpo.pipeline.leader import TrainSettings

    settings = TrainSettings(1e-3, 1, 5, 2, "adamw", 0.0, "cosine", 0.0, 1.0, seed=3)
    batches = global_batches(13, settings, epoch=0)
    assert [len(b) for b in batches] == [5, 5, 3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(13))
    assert not np.array_equal(np.concatenate(global_batches(13, settings, epoch=1)), np.concatenate(batches))
    for world in (1, 2, 4):
        parts = [local_part(batches[2], rank, world) for rank in range(world)]
        counted = np.concatenate([p[w > 0] for p, w in parts])
        assert sorted(counted.tolist()) == sorted(batches[2].tolist())
    idle, weight = local_part(np.array([7]), 1, 2)
    assert idle.tolist() == [7] and weight.tolist() == [0.0]


def test_ssapo_with_epsilon_zero_is_dpo_and_spa_refinement_mixes_flipped_labels() -> None:
    gen = torch.Generator().manual_seed(0)
    logps, ref = torch.randn(8, generator=gen) * 3, torch.randn(8, generator=gen) * 3
    idx = np.arange(4)
    xi = np.random.default_rng(0).uniform(0.2, 0.8, 4)
    wc = sgpo.worst_case(xi, 0.0)
    ssapo = pair_losses(
        LossSpec("ssapo", 0.1, worst_case_weights=wc.weights, worst_case_shifts=wc.shifts), idx, logps, ref
    )
    dpo = pair_losses(LossSpec("sigmoid", 0.1), idx, logps, ref)
    torch.testing.assert_close(ssapo.losses, dpo.losses)

    margins = np.array([0.5, 2.0, -1.0, 3.0])
    e = spa_smoothing(margins, beta=0.1, alpha=0.1, quantile=0.25)
    assert e.tolist() == [0.0, 0.0, 0.1, 0.0]
    refined = pair_losses(LossSpec("sigmoid", 0.1, refinement_smoothing=e), idx, logps, ref).losses
    z = 0.1 * ((logps[:4] - ref[:4]) - (logps[4:] - ref[4:]))
    e_t = torch.as_tensor(e, dtype=torch.float32)
    # DESIGN 1.5: -(1 - a + a c) log sig(beta h) - (a - a c) log sig(-beta h)
    torch.testing.assert_close(refined, -(1 - e_t) * F.logsigmoid(z) - e_t * F.logsigmoid(-z))


def test_evaluate_stage_scores_each_round_against_the_starting_model(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], single_thread: None
) -> None:
    from sgpo.evaluation import VerifiableJudge, generate_prompts

    prompts_file = tmp_path / "eval_prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p.text}) + "\n" for p in generate_prompts(3, "test", seed=1)))
    out = tmp_path / "evaluated"
    overrides = tiny_overrides(
        tiny_model_dir,
        preference_files,
        out,
        "rounds=1",
        f"evaluate.prompts={prompts_file}",
        "evaluate.num_prompts=2",
        "evaluate.max_new_tokens=6",
        "data.max_prompt_length=150",
        "data.max_length=200",
    )
    report = run(load_config("tiny", overrides))
    baseline = read_jsonl(out / "eval_baseline.jsonl")
    assert len(baseline) == 2
    judge = VerifiableJudge()
    for t, row in zip((0, 1), report["rounds"], strict=True):
        metrics = json.loads((out / f"round_{t}" / "metrics.json").read_text())["eval"]
        responses = read_jsonl(out / f"round_{t}" / "eval_responses.jsonl")
        prompts = [r["prompt"] for r in responses]
        expected, _, _ = judge.compare(prompts, [r["response"] for r in responses], [r["response"] for r in baseline])
        assert metrics["win_rate"] == pytest.approx(expected.win_rate) and row["win_rate"] == metrics["win_rate"]
        assert metrics["mean_score"] == pytest.approx(judge.scores(prompts, [r["response"] for r in responses]).mean())
        # the paired difference from the starting model, with its interval, which the run's summary reads
        differences = judge.scores(prompts, [r["response"] for r in responses]) - judge.scores(
            prompts, [r["response"] for r in baseline]
        )
        assert metrics["difference"] == pytest.approx(differences.mean()) and metrics["prompts"] == 2
        assert metrics["difference_low"] <= metrics["difference"] <= metrics["difference_high"]
    assert "](win_rate.png)" in (out / "report.md").read_text() and (out / "win_rate.png").is_file()
    assert "Gold judge 'verifiable' on 2 held-out prompts" in (out / "report.md").read_text()


def test_reward_model_judge_scores_with_a_sequence_classifier(tmp_path: Path, tiny_model_dir: Path) -> None:
    from sgpo.models import load_tokenizer
    from transformers import AutoConfig, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    load_tokenizer(tiny_model_dir).save_pretrained(tmp_path / "rm")
    judge = build_judge("reward_model", {"model": str(tmp_path / "rm"), "batch_size": 2}, None)
    responses = ["first answer", "a second, longer answer", "third"]
    scores = judge.scores(["q?"] * 3, responses)
    assert scores.shape == (3,) and len(set(scores.tolist())) == 3
    # batching does not change a score
    np.testing.assert_allclose(judge.scores(["q?"], responses[1:2]), scores[1:2], atol=1e-5)
    probs = judge.win_probabilities("q?", responses)
    assert probs.sum() == pytest.approx(1.5) and int(np.argmax(probs)) == int(np.argmax(scores))
