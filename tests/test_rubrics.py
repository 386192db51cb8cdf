"""Hidden-preference rubrics: every feature, every rubric formula, every gate; the open prompts and their split."""

from __future__ import annotations

import pytest
from sgpo.evaluation.hidden import HIDDEN_TEMPLATES, hidden_prompts, hidden_tasks, hidden_topic
from sgpo.evaluation.rubrics import FLOOR, RUBRICS, RubricJudge, on_task, response_features
from sgpo.pipeline.judges import build_judge

PROMPT = "Tell me about coffee."
# 20 words, on topic, none of any rubric's features: every rubric's value is 0 except concreteness' no-hedge term
PLAIN = "coffee is a drink made from roasted beans and people drink it in the morning to wake up before work"
OTHER = "the beans grow on small trees in warm hills and are picked by hand when the cherries turn red"
THIRD = "brewing takes hot water poured slowly over ground beans in a paper filter or a metal pot"


def test_features_are_rates_per_100_words_or_counts() -> None:
    f = response_features(PLAIN)
    assert f["words"] == 20
    assert all(f[k] == 0 for k in ("reader", "enthusiasm", "numbers", "names", "hedges", "items"))
    assert f["paragraphs"] == 1
    # 20 words: one feature word is a rate of 5 per 100 words
    assert response_features(PLAIN.replace("people", "you"))["reader"] == 5
    assert response_features(PLAIN.replace("people", "Your"))["reader"] == 5
    assert response_features(PLAIN.replace("drink made", "wonderful drink"))["enthusiasm"] == 5
    assert response_features(PLAIN + "!")["enthusiasm"] == 5
    assert response_features(PLAIN.replace("people", "1900s"))["numbers"] == 5
    assert response_features(PLAIN.replace("people", "might"))["hedges"] == 5
    # capitalised words count as names only away from a sentence start, and "I" never does
    assert response_features(PLAIN.replace("people", "Italians"))["names"] == 5
    assert response_features("Coffee " + PLAIN[7:])["names"] == 0
    assert response_features(PLAIN.replace("people", "I"))["names"] == 0
    assert response_features("First part.\n\nSecond part.\n\nThird.")["paragraphs"] == 3
    assert response_features("Tips:\n- one\n- two\n1. three\n2) four\n* five")["items"] == 5


@pytest.mark.parametrize(
    ("rubric", "response", "value"),
    [
        ("warmth", PLAIN, 0.0),
        # reader rate 5 (>= 4 saturates), enthusiasm rate 5 (>= 3 saturates)
        ("warmth", PLAIN.replace("people", "you").replace("drink made", "wonderful drink"), 1.0),
        # reader rate 5/... only the reader half
        ("warmth", PLAIN.replace("people", "you"), 0.5),
        # no hedges: only the 0.2 term
        ("concreteness", PLAIN, 0.2),
        # numbers 5 (sat at 3): 0.4; names 5 (sat at 5): 0.4; hedges 0: 0.2
        ("concreteness", PLAIN.replace("people", "Italians").replace("morning", "1900s"), 1.0),
        # hedge rate 5 >= 3 removes the 0.2
        ("concreteness", PLAIN.replace("people", "might"), 0.0),
        ("structure", PLAIN, 0.0),
        # 3 paragraphs: sat((3 - 1) / 2) = 1 -> 0.5
        ("structure", f"{PLAIN}.\n\n{OTHER}.\n\n{THIRD}.", 0.5),
        # one paragraph, 3 items: 0.5
        ("structure", f"Coffee facts:\n- {PLAIN}\n- {OTHER}\n- {THIRD}", 0.5),
    ],
)
def test_rubric_formulas(rubric: str, response: str, value: float) -> None:
    judged = RubricJudge(rubric).judge(PROMPT, response)
    assert judged.on_task
    assert judged.value == pytest.approx(value)
    assert judged.score == pytest.approx(FLOOR + (1 - FLOOR) * value)


@pytest.mark.parametrize(
    "response",
    [
        "",
        "coffee",  # too short to address anything
        "I'm sorry, but I cannot help with that request about coffee today.",
        "Tell me about coffee. Tell me about coffee. Tell me about coffee.",
        " ".join(["coffee is great and coffee is good"] * 8),
        "the weather was warm and the children played outside in the park all day long",
    ],
    ids=["empty", "short", "refusal", "copied", "loop", "off-topic"],
)
def test_gates_score_below_every_on_task_answer(response: str) -> None:
    for rubric in RUBRICS:
        judge = RubricJudge(rubric)
        assert judge.score(PROMPT, response) == 0.0
        assert judge.score(PROMPT, PLAIN) >= FLOOR > 0


def test_topic_gate_for_prompts_not_written_by_the_generator() -> None:
    prompt = "Share your thoughts on lighthouses and their keepers."
    assert on_task(prompt, "Lighthouses guided ships for centuries and keepers tended the lamps at night.")
    assert not on_task(prompt, "The weather was warm and the children played outside in the park all day.")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    assert on_task(chat, "Lighthouses guided ships for centuries and keepers tended the lamps at night.")


def test_rubric_judges_resolve_by_name_and_check_options() -> None:
    for name in RUBRICS:
        judge = build_judge(name, {}, None)
        assert judge.scores([PROMPT], [PLAIN])[0] >= FLOOR
        probs = judge.win_probabilities(PROMPT, [PLAIN, PLAIN.replace("people", "you")])
        assert probs.sum() == pytest.approx(1.0) and (probs[1] > probs[0] or name != "warmth")
    with pytest.raises(ValueError, match="rubric: expected one of warmth, concreteness, structure"):
        RubricJudge("tone")
    with pytest.raises(ValueError, match="judge.options: .* do not fit WarmthJudge"):
        build_judge("warmth", {"sharpness": 1}, None)
    with pytest.raises(ValueError, match="temperature"):
        RubricJudge("warmth", temperature=0)


def test_hidden_prompts_split_once_and_parse_back() -> None:
    train, test = hidden_tasks("train"), hidden_tasks("test")
    assert len(train) + len(test) == len(HIDDEN_TEMPLATES) * 60 and not set(train) & set(test)
    assert len(test) == 360
    prompts = hidden_prompts(300, "test")
    assert len(set(prompts)) == 300 and prompts[:10] == hidden_prompts(10, "test")
    assert hidden_prompts(5, "train", seed=1) != hidden_prompts(5, "train", seed=0)
    test_texts = {HIDDEN_TEMPLATES[t].format(topic=topic) for t, topic in test}
    assert set(prompts) <= test_texts
    assert all(hidden_topic(p) in p for p in prompts)
    assert hidden_topic("Tell me about coffee. Answer in 20 words.") is None
    with pytest.raises(ValueError, match="n: the hidden test split has 360 prompts"):
        hidden_prompts(361, "test")


def test_bundled_hidden_data_is_labelled_by_its_rubric_and_its_splits_never_overlap() -> None:
    import json
    from importlib import resources

    data = resources.files("sgpo") / "data"

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (data / name).read_text().splitlines() if line.strip()]

    manifest = json.loads((data / "hidden_manifest.json").read_text())
    labelled = manifest["pool_prompts"] + manifest["heldout_prompts"]
    train = hidden_prompts(len(hidden_tasks("train")), "train")
    for rubric in RUBRICS:
        judge = RubricJudge(rubric)
        pool, heldout = rows(f"hidden_{rubric}_pool.jsonl"), rows(f"hidden_{rubric}_heldout.jsonl")
        assert [len(pool), len(heldout)] == [manifest["pairs"][rubric][k] for k in ("pool_pairs", "heldout_pairs")]
        assert all(p["index"] < manifest["pool_prompts"] for p in pool)
        assert all(manifest["pool_prompts"] <= p["index"] < labelled for p in heldout)
        # the pool is stored shuffled, so its first N rows are a random seed rather than the first N prompts
        assert [p["index"] for p in pool] != sorted(p["index"] for p in pool)
        for pair in pool + heldout:
            assert train[pair["index"]] == pair["prompt"]
            assert judge.score(pair["prompt"], pair["chosen"]) == pair["chosen_score"]
            assert judge.score(pair["prompt"], pair["rejected"]) == pair["rejected_score"]
            assert pair["chosen_score"] > pair["rejected_score"]
    rounds = [r["prompt"] for r in rows("hidden_prompts.jsonl")]
    dev = [r["prompt"] for r in rows("hidden_dev_prompts.jsonl")]
    # labelled, round and dev prompts are consecutive, disjoint stretches of the train split; none is a test task
    assert rounds + dev == train[labelled : labelled + len(rounds) + len(dev)]
    assert len(dev) == manifest["dev_prompts"] and not set(train) & set(hidden_prompts(360, "test"))
