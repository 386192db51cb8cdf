"""``sgpo solve``: reads .npy / .pt / JSONL margins, writes the worst case to .npz."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sgpo
import torch
from sgpo.cli import main


@pytest.fixture
def margins():
    return np.random.default_rng(0).uniform(0, 1, 250)


def _check(out, margins, capsys, **kw):
    saved = np.load(out)
    ref = sgpo.worst_case(margins, 0.01, **kw)
    np.testing.assert_allclose(saved["weights"], ref.weights)
    np.testing.assert_allclose(saved["shifts"], ref.shifts)
    np.testing.assert_allclose(saved["value"], ref.value)
    np.testing.assert_allclose(saved["dual"], ref.dual)
    printed = capsys.readouterr().out
    assert "value" in printed and "dual" in printed and "margins attacked" in printed


def test_solve_npy(tmp_path, margins, capsys):
    np.save(tmp_path / "m.npy", margins)
    out = tmp_path / "wc.npz"
    argv = [str(tmp_path / "m.npy"), "--epsilon", "0.01", "--group-size", "100", "--max-shift", "0.01"]
    assert main(["solve", *argv, "--out", str(out)]) == 0
    _check(out, margins, capsys, group_size=100, max_shift=0.01)
    assert np.load(out)["value"].shape == (3,)


def test_solve_pt_margin_space(tmp_path, margins, capsys):
    h = torch.from_numpy(margins * 6 - 3)
    torch.save(h, tmp_path / "m.pt")
    out = tmp_path / "wc.npz"
    argv = ["solve", str(tmp_path / "m.pt"), "--epsilon", "0.01", "--space", "margin", "--pieces", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    saved = np.load(out)
    ref = sgpo.worst_case(h.numpy(), 0.01, space="margin", pieces=4)
    np.testing.assert_allclose(saved["value"], ref.value)
    assert str(saved["space"]) == "margin"
    capsys.readouterr()


@pytest.mark.parametrize("column_flag", [False, True])
def test_solve_jsonl_column(tmp_path, margins, capsys, column_flag):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "margin": float(m)}) + "\n" for i, m in enumerate(margins)))
    src = [str(path), "--column", "margin"] if column_flag else [f"{path}:margin"]
    out = tmp_path / "wc.npz"
    assert main(["solve", *src, "--epsilon", "0.01", "--out", str(out)]) == 0
    _check(out, margins, capsys)


def test_solve_errors_exit_2(tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"margin": 0.3}) + "\n")
    assert main(["solve", f"{path}:score", "--epsilon", "0.01", "--out", str(tmp_path / "o.npz")]) == 2
    assert "no column 'score'" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.array([0.5, 2.0]))
    assert main(["solve", str(tmp_path / "bad.npy"), "--epsilon", "0.01"]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    assert main(["solve", str(tmp_path / "missing.npy"), "--epsilon", "0.01"]) == 2
    assert main(["solve", str(path), "--epsilon", "0.01"]) == 2
    assert "--column" in capsys.readouterr().err
