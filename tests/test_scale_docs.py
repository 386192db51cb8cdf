"""docs/scale.md stays true: its launches are the ones the tests run at tiny size, and every config file, config key,
command-line option and error message it shows is the code's.

- Every ``$(sgpo config-path NAME)`` names a packaged config, and the accelerate configs the page launches with are
  the files tests/test_scale_pipeline.py and tests/test_fsdp.py launch (with the same CPU flags and the ``tiny``
  recipe the page's rehearsal shows).
- Every ``sgpo`` command parses with sgpo's own parser; every ``sgpo run`` loads its recipe with its overrides.
- Every config key the page names in code (``train.save_steps``, ``generation.backend=vllm``) is accepted.
- The "Bad input" lines are what the checks raise.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "scale.md"
LAUNCH_TESTS = [ROOT / "tests" / "test_scale_pipeline.py", ROOT / "tests" / "test_fsdp.py"]
RECIPE = "mistral-7b_ssapo"

BASH = re.compile(r"^```bash\n(.*?)^```", flags=re.S | re.M)
CONFIG_PATH = re.compile(r"^\$\(sgpo config-path (\S+)\)$")
INLINE = re.compile(r"`([^`\n]+)`")
# a dotted config key, alone, as an override (key=value) or as YAML (key: value)
KEY = re.compile(r"^([a-z0-9_]+(?:\.[a-z0-9_]+)+)(=|: |$)")
CONFIG_FILE = re.compile(r"\bconfigs/(?:accelerate/)?[\w.-]+\.yaml\b")


def commands(text: str) -> list[list[str]]:
    """The shell commands of the page's bash blocks, one token list each (continuation lines joined)."""
    found = []
    for block in BASH.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                found.append(shlex.split(line))
    return found


def launch_parts(tokens: list[str]) -> tuple[str | None, list[str], list[str]]:
    """An ``accelerate launch`` command's config name, its launcher flags, and what follows ``-m``."""
    config, flags = None, tokens[2 : tokens.index("-m")]
    if "--config_file" in flags:
        at = flags.index("--config_file")
        match = CONFIG_PATH.match(flags[at + 1])
        config = match.group(1) if match else flags[at + 1]
        flags = flags[:at] + flags[at + 2 :]
    return config, flags, tokens[tokens.index("-m") + 1 :]


def config_key_exists(key: str) -> bool:
    from sgpo.pipeline.config import RunConfig

    node: object = RunConfig
    for part in key.split("."):
        names = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in names:
            return False
        node = names[part].default_factory() if names[part].default_factory is not dataclasses.MISSING else None
    return True


def problems(text: str) -> list[str]:
    """Each config, key, option or command of ``text`` that sgpo does not have, as 'what: why'."""
    from sgpo.cli import build_parser
    from sgpo.configs_cli import packaged_config
    from sgpo.pipeline import load_config
    from sgpo.pipeline.config import RunConfig

    found = []
    sgpo_commands = []
    for tokens in commands(text):
        if tokens[:2] == ["accelerate", "launch"]:
            config, _, module = launch_parts(tokens)
            try:
                packaged_config(config or "")
            except FileNotFoundError as err:
                found.append(f"{config}: {err}")
            if module[:1] == ["sgpo"]:
                sgpo_commands.append(module[1:])
        elif tokens[0] == "sgpo":
            sgpo_commands.append(tokens[1:])
    parser = build_parser()
    for argv in sgpo_commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            found.append(f"sgpo {' '.join(argv)}: sgpo's parser refuses it")
            continue
        if args.command == "run":
            try:
                load_config(args.config, args.overrides)
            except (ValueError, FileNotFoundError) as err:
                found.append(f"sgpo {' '.join(argv)}: {err}")
    for name in CONFIG_FILE.findall(text):
        if not (ROOT / "python" / "sgpo" / name).is_file():
            found.append(f"{name}: no such file in python/sgpo")
    sections = {f.name for f in dataclasses.fields(RunConfig)}
    for span in INLINE.findall(text):
        match = KEY.match(span)
        if match is None or match.group(1).split(".")[0] not in sections:
            continue
        key, sep = match.group(1), match.group(2)
        if not config_key_exists(key):
            found.append(f"{span}: no such config key")
        elif sep == "=":
            try:
                load_config(RECIPE, [span])
            except ValueError as err:
                found.append(f"{span}: {err}")
    return found


def test_every_config_key_option_and_file_the_page_names_exists() -> None:
    assert len(commands(PAGE.read_text())) >= 10
    assert problems(PAGE.read_text()) == []


def test_a_missing_config_key_or_option_is_reported() -> None:
    text = (
        "```bash\n"
        'accelerate launch --config_file "$(sgpo config-path accelerate/zero2.yaml)" -m sgpo run mistral-7b_ssapo\n'
        'accelerate launch --config_file "$(sgpo config-path accelerate/fsdp.yaml)" -m sgpo run mistral-7b_ssapo \\\n'
        "    follower.epsilonn=0.02\n"
        "sgpo eval runs/x --devices cuda\n"
        "```\n"
        "`generation.vllm.tp=2`, `train.save_steps`, `train.save_step`, `generation.backend=vlm`, "
        "configs/accelerate/zero2.yaml\n"
    )
    found = problems(text)
    assert [p.split(":")[0] for p in found] == [
        "accelerate/zero2.yaml",
        "sgpo run mistral-7b_ssapo follower.epsilonn=0.02",
        "sgpo eval runs/x --devices cuda",
        "configs/accelerate/zero2.yaml",
        "generation.vllm.tp=2",
        "train.save_step",
        "generation.backend=vlm",
    ], found


def test_the_launches_are_the_ones_the_tests_run_at_tiny_size() -> None:
    from conftest import accelerate_launch
    from sgpo.configs_cli import packaged_config

    launches = [launch_parts(t) for t in commands(PAGE.read_text()) if t[:2] == ["accelerate", "launch"]]
    sources = "\n".join(path.read_text() for path in LAUNCH_TESTS)
    tested = set(re.findall(r'"(\w+\.yaml)"', sources))
    assert tested == {"deepspeed_zero3.yaml", "fsdp.yaml"}
    # the 7B recipe is launched with each config file the tests launch, and with no other
    seven_b = {config for config, _, module in launches if module[:3] == ["sgpo", "run", RECIPE]}
    assert {Path(c).name for c in seven_b} == tested
    for config in seven_b:
        # `sgpo config-path` gives the very file the tests launch with
        test_file = ROOT / "python" / "sgpo" / "configs" / config
        assert packaged_config(config).read_bytes() == test_file.read_bytes()
    # the tiny rehearsal: the tests' CPU flags and recipe, under each tested config
    rehearsals = {config: flags for config, flags, module in launches if module == ["sgpo", "run", "tiny"]}
    assert {Path(c).name for c in rehearsals} == tested
    for path in LAUNCH_TESTS:
        source = path.read_text()
        assert "accelerate_launch(" in source and ('"run", "tiny"' in source or 'load_config("tiny"' in source)
    launcher = accelerate_launch(Path("config.yaml"), 29500)
    cpu_flags = launcher[launcher.index("config.yaml") + 1 : launcher.index("--main_process_port")]
    assert cpu_flags == ["--num_processes", "2", "--mixed_precision", "no"]
    assert all(flags == cpu_flags for flags in rehearsals.values())
    # ZeRO-2 is the ZeRO-3 file with --zero_stage 2, as the test launches it
    assert ["--zero_stage", "2"] in [f for c, f, m in launches if m[:3] == ["sgpo", "run", RECIPE]]
    assert '["--zero_stage", str(stage)]' in LAUNCH_TESTS[0].read_text()


def bad_input_lines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The errors the page's "Bad input" section shows, raised by the checks themselves."""
    import torch
    from sgpo.pipeline import distributed, load_config, zero

    messages = []
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for stage, clip, max_grad_norm in (("1", "1.0", 1.0), ("3", "1.0", 0.5)):
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", stage)
        monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", clip)
        with pytest.raises(ValueError) as err:
            zero.make_plugin(per_device_batch_size=2, max_grad_norm=max_grad_norm, world=8)
        messages.append(str(err.value))
    find_spec = importlib.util.find_spec
    missing = ("deepspeed", "vllm")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    with pytest.raises(ValueError) as err:
        distributed.check_backends("transformers")
    messages.append(str(err.value))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError) as err:
        distributed.check_backends("vllm")
    messages.append(str(err.value))
    with pytest.raises(ValueError) as err:
        load_config(RECIPE, ["generation.vllm.max_model_len=512"])
    messages.append(str(err.value))
    return [f"sgpo run: error: {m}" for m in messages]


def test_the_bad_input_lines_are_what_the_checks_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepspeed")
    section = PAGE.read_text().split("## Bad input", 1)[1]
    shown = [line for line in section.splitlines() if line.startswith("sgpo run: error: ")]
    assert shown == bad_input_lines(monkeypatch)


def test_sgpo_prints_a_bad_config_as_the_page_shows(capsys: pytest.CaptureFixture[str]) -> None:
    from sgpo.cli import main

    assert main(["run", RECIPE, "generation.vllm.max_model_len=512"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("sgpo run: error: generation.vllm.max_model_len:") and line in PAGE.read_text()
