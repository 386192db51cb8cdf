"""Commands run from the repository root, where ``python -m``, ``python -c`` and pytest put the root on ``sys.path``.

The root's ``kernels/`` directory (sgpo's Triton sources, installed as ``sgpo.kernels``) has no ``__init__.py``, so
it is only a namespace portion there: the import system takes a regular package named ``kernels`` from anywhere on
``sys.path`` before it (Hugging Face's, which transformers imports), and without one it gives an empty namespace
package with no ``__file__``, which transformers reports as not installed.
"""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
from importlib import metadata
from pathlib import Path

from conftest import PYTHON, subprocess_env, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def from_root(argv: list[str], tmp_path: Path, timeout: int = 300) -> str:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=subprocess_env(tmp_path), timeout=timeout)
    assert done.returncode == 0, f"{argv} from {ROOT} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def test_the_root_kernels_directory_never_shadows_a_package(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("")
    # the root comes first on sys.path, as under python -m; the installed package still wins
    spec = importlib.machinery.PathFinder.find_spec("kernels", [str(ROOT), str(site)])
    assert spec is not None and spec.origin == str(site / "kernels" / "__init__.py")
    # with no package installed it is a namespace package: no file, no loader of a module
    alone = importlib.machinery.PathFinder.find_spec("kernels", [str(ROOT)])
    assert alone is not None and alone.origin in (None, "namespace")


def test_transformers_imports_hugging_faces_kernels_from_the_root(tmp_path: Path) -> None:
    code = "import kernels, transformers.integrations.hub_kernels; print(kernels.__file__)"
    printed = from_root([PYTHON, "-c", code], tmp_path).strip().splitlines()[-1]
    try:
        metadata.version("kernels")
    except metadata.PackageNotFoundError:
        assert printed == "None"  # transformers < 5.25 does not need it: an empty namespace, reported as absent
    else:
        assert Path(printed).resolve().is_relative_to(Path(metadata.distribution("kernels").locate_file("")))
        assert not Path(printed).resolve().is_relative_to(ROOT / "kernels")


def test_the_triton_kernels_import_as_sgpo_kernels() -> None:
    from sgpo.kernels import logps, preference

    assert Path(logps.__file__).parent.name == "kernels" and hasattr(preference, "preference_pair_losses")


def test_info_label_and_run_from_the_root(
    tiny_model_dir: Path, preference_files: dict[str, Path], tmp_path: Path
) -> None:
    assert "cuda_archs" in from_root([PYTHON, "-m", "sgpo", "info"], tmp_path)

    pairs = tmp_path / "gold.jsonl"
    label = [PYTHON, "-m", "sgpo", "label", str(tiny_model_dir), "--judge", "warmth", "--prompts", "hidden"]
    label += ["--budget", "2", "--samples", "2", "--max-new-tokens", "4", "--out", str(pairs)]
    assert "pairs from 2 prompts" in from_root(label, tmp_path) and pairs.is_file()

    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_model_dir, preference_files, out, "rounds=1", "data.prompts_per_round=4")
    from_root([PYTHON, "-m", "sgpo", "run", "tiny", *overrides], tmp_path, timeout=600)
    metrics = json.loads((out / "round_1" / "metrics.json").read_text())
    assert metrics["round"] == 1
