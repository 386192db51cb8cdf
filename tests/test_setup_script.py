"""scripts/setup.sh installs the tested set (constraints.txt) and says plainly when a pin cannot be had here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def deps_script(*argv: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "deps.py"), *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_tested_pin_is_exact_and_torch_is_among_them() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from deps import read_constraints
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    pins = read_constraints(ROOT / "constraints.txt")
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "triton", "numpy", "highspy"):
        assert re.fullmatch(r"\d+(\.\d+)*(\.?post\d+)?", pins[name]), (name, pins.get(name))
    assert "sgpo" not in pins and not any("+" in version for version in pins.values())


def test_a_pin_that_cannot_be_installed_names_the_package_and_the_way_out(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# a tested set from another platform\ntorch==2.13.0\nnumpy==0.0.1\n")
    venv = tmp_path / "venv"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), sys.executable, str(venv)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SGPO_CONSTRAINTS": str(constraints), "HOME": str(tmp_path)},
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pip found no numpy==0.0.1 for Python" in done.stderr and "SGPO_DEPS=latest" in done.stderr
    assert "Traceback" not in done.stderr
    # nothing was installed before the check said no
    assert not list(venv.glob("lib/python*/site-packages/torch"))


def test_an_unknown_deps_setting_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), sys.executable, str(tmp_path / "venv")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SGPO_DEPS": "newest"},
        timeout=60,
    )
    assert done.returncode == 2 and "SGPO_DEPS=newest: expected 'tested'" in done.stderr


def test_freeze_then_diff_reports_each_version_that_moved(tmp_path: Path) -> None:
    frozen = tmp_path / "constraints.txt"
    deps_script("freeze", "--out", str(frozen))
    assert "0 of" in deps_script("diff", "--constraints", str(frozen))
    from importlib import metadata

    torch_version = metadata.version("torch").split("+")[0]
    lines = frozen.read_text().replace(f"torch=={torch_version}", "torch==1.0.0").splitlines()
    frozen.write_text("\n".join([line for line in lines if not line.startswith("numpy==")] + ["no-such-dist==1.0"]))
    report = deps_script("diff", "--constraints", str(frozen))
    assert "(1 of" in report and re.search(rf"torch +1\.0\.0 +{re.escape(torch_version)}", report)
    assert "installed but not in the tested set: numpy==" in report
    assert "in the tested set but not installed: no-such-dist" in report
