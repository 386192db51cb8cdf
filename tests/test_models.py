"""Model resolution, the tiny test model, the SmolLM2 conversion, and sampling in ``sgpo.generation``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sgpo.generation import format_prompt, generate_responses, row_seed  # noqa: E402
from sgpo.models import SMOLLM2, TINY, build_tiny_model, load_model, load_tokenizer, resolve_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, single_thread: None):
    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def test_tiny_tokenizer_round_trips_text_and_has_a_chat_template(tiny) -> None:
    _, tokenizer = tiny
    text = "Ünïcode, tabs\tand newlines\n: 42 €"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())
    assert tokenizer.decode(ids) == text
    rendered = format_prompt(tokenizer, "hi", system_prompt="be brief")
    assert rendered == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_build_tiny_model_is_deterministic(tmp_path: Path, tiny) -> None:
    model, _ = tiny
    again = load_model(build_tiny_model(tmp_path / "again"))
    other = load_model(build_tiny_model(tmp_path / "other", seed=1))
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, r) for p, r in zip(model.parameters(), other.parameters()))


def test_resolve_model_errors_and_pass_through(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert resolve_model(tiny_model_dir) == str(tiny_model_dir)
    assert resolve_model("mistralai/Mistral-7B-Instruct-v0.2") == "mistralai/Mistral-7B-Instruct-v0.2"
    with pytest.raises(FileNotFoundError, match="no/such/dir/here"):
        resolve_model(tmp_path / "no/such/dir/here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="dtype"):
        load_model(tiny_model_dir, dtype="float33")


def test_only_short_names_mean_the_bundled_smollm2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the bundled model is the Q4_1 GGUF dequantised, not the hub's weights: the hub id must reach from_pretrained as is
    import sgpo.models

    converted: list[Path] = []

    def fake_convert(gguf_path: Path, output_dir: Path) -> Path:
        converted.append(Path(output_dir))
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "config.json").write_text("{}")
        return Path(output_dir)

    monkeypatch.setenv("SGPO_CACHE", str(tmp_path))
    monkeypatch.setattr(sgpo.models, "smollm2_gguf_path", lambda: tmp_path / "never-read.gguf")
    monkeypatch.setattr(sgpo.models, "convert_gguf", fake_convert)
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    for name in (hub_id, hub_id.lower(), hub_id.upper()):
        assert resolve_model(name) == name
    assert converted == [] and not (tmp_path / SMOLLM2).exists()
    for name in (SMOLLM2, SMOLLM2.lower(), SMOLLM2.upper(), "smollm2", "SmolLM2", "SMOLLM2"):
        assert resolve_model(name) == str(tmp_path / SMOLLM2)
    assert converted == [tmp_path / SMOLLM2]


def test_tiny_name_builds_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny) -> None:
    monkeypatch.setenv("SGPO_CACHE", str(tmp_path))
    path = Path(resolve_model(TINY))
    assert path == tmp_path / TINY and [p.name for p in tmp_path.iterdir()] == [TINY]
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(TINY) == str(path) and (path / "model.safetensors").stat().st_mtime_ns == stamp
    model, _ = tiny
    for p, q in zip(model.state_dict().values(), load_model(TINY).state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_samples_do_not_depend_on_batching(tiny) -> None:
    model, tokenizer = tiny
    prompts = ["hello there", "what is two plus two?", "x", "a somewhat longer prompt to force padding"]
    full = generate_responses(model, tokenizer, prompts, num_samples=2, max_new_tokens=12, batch_size=3, seed=7)
    assert [len(r) for r in full] == [2, 2, 2, 2]
    alone = generate_responses(
        model, tokenizer, prompts[1:2], prompt_indices=[1], num_samples=2, max_new_tokens=12, batch_size=1, seed=7
    )
    assert alone[0] == full[1]
    assert full[1][0] != full[1][1]
    reseeded = generate_responses(model, tokenizer, prompts, num_samples=2, max_new_tokens=12, seed=8)
    assert reseeded != full


def test_greedy_and_top_p_limit_match_plain_generate(tiny) -> None:
    model, tokenizer = tiny
    prompt = "tell me a story"
    ids = tokenizer(format_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    greedy = generate_responses(model, tokenizer, [prompt], max_new_tokens=10, temperature=0.0)
    # top_p this small keeps only the most likely token: sampling must reduce to greedy decoding
    nucleus = generate_responses(model, tokenizer, [prompt], max_new_tokens=10, temperature=0.7, top_p=1e-9)
    assert greedy[0][0] == expected == nucleus[0][0]


def test_generation_rejects_bad_arguments(tiny) -> None:
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="num_samples"):
        generate_responses(model, tokenizer, ["a"], num_samples=0)
    with pytest.raises(ValueError, match="top_p"):
        generate_responses(model, tokenizer, ["a"], top_p=0.0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate_responses(model, tokenizer, ["a", "  "])
    with pytest.raises(ValueError, match="prompt_indices"):
        generate_responses(model, tokenizer, ["a"], prompt_indices=[0, 1])


def test_row_seed_is_stable() -> None:
    assert row_seed(0, 1, 2) == row_seed(0, 1, 2)
    assert len({row_seed(0, i, j) for i in range(20) for j in range(3)}) == 60
    assert 0 <= row_seed(123, 4, 5) < 2**63


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SGPO_SLOW_TESTS"), reason="converts SmolLM2 (30 s): SGPO_SLOW_TESTS=1")
def test_smollm2_converts_once_and_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf")
    monkeypatch.setenv("SGPO_CACHE", str(tmp_path))
    try:
        path = Path(resolve_model(SMOLLM2))
    except FileNotFoundError as err:
        pytest.skip(str(err))
    assert (path / "model.safetensors").is_file()
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    assert [p.name for p in tmp_path.iterdir()] == [SMOLLM2]
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(SMOLLM2) == str(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    model, tokenizer = load_model(SMOLLM2), load_tokenizer(SMOLLM2)
    answer = generate_responses(model, tokenizer, ["What is 2+2?"], max_new_tokens=20, temperature=0.0)[0][0]
    assert "4" in answer
