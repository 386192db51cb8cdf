"""The fused LM head of a DPO step on a GPU: sgpo's Triton path against materialised PyTorch and the fused heads of
TRL, Liger and Cut Cross-Entropy, at Llama-3's and SmolLM2's heads, bfloat16, forward plus backward.

1. Sweep, in this process: the Triton path's vocabulary block, token chunk and ``num_warps`` at every case; the fastest
   setting per case is what its ``sgpo_triton`` row runs and what ``--tuned-out`` records.
2. Methods, each in a fresh process per head (both pair counts of the head in it, peak memory reset between them):
     torch        logits = x @ W.T, log_softmax in float32, gather, masked sum (materialised PyTorch, the baseline)
     sgpo_torch   sgpo.ops.fused_linear_sequence_logps on its PyTorch path (SGPO_KERNELS=torch)
     sgpo_triton  the same op on its Triton path at the sweep's best setting (SGPO_KERNELS=triton)
     trl_fused    TRL's fused LM head (trl.trainer.utils.add_fused_lm_head)
     liger        liger_kernel's LigerFusedLinearDPOLoss (torch.compile'd, its default on a GPU)
     cce, cce_filter  cut_cross_entropy.linear_cross_entropy per token, gradient filtering off and on ("high")
   Every method computes the sequence log-probs and the sigmoid DPO loss with reference log-probs 0. Each row gives
   the time (``triton.testing.do_bench``), the peak memory above the inputs, the largest error of the hidden and head
   gradients against float32 materialised PyTorch on the same inputs, and ratios to the ``torch`` row.
3. ``--tuned-out``: per case, sgpo's fastest backend (Triton at its best setting, or the PyTorch path) among those whose
   peak memory is within ``--memory-limit`` of the baseline's: the file ``sgpo.ops.dispatch`` reads.

    python benchmarks/bench_fused_head.py --out fused_head.md --tuned-out fused_linear_tuned.json
    python benchmarks/bench_fused_head.py --rehearse --out /tmp/fused_head.md    # on a CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_losses  # noqa: E402
from sgpo.ops.dispatch import TRITON_BLOCK, TRITON_CHUNK_TOKENS, TRITON_NUM_WARPS  # noqa: E402

METHODS = ("torch", "sgpo_torch", "sgpo_triton", "trl_fused", "liger", "cce", "cce_filter")
# (name, hidden, vocab, pairs) at 1,024 tokens per sequence, a quarter of them prompt
HEADS = {"Llama-3": (4096, 128_256, (2, 4)), "SmolLM2": (576, 49_152, (4, 8))}
REHEARSAL_HEADS = {"tiny": (32, 300, (2,))}
SWEEP = {"block": (2048, 4096, 8192, 16384), "chunk_tokens": (2048, 4096, 8192), "num_warps": (4, 8)}
REHEARSAL_SWEEP = {"block": (128, 256), "chunk_tokens": (32,), "num_warps": (4,)}
BETA = 0.1


def _set_triton(setting: dict) -> None:
    from sgpo.ops import dispatch

    dispatch.TRITON_BLOCK, dispatch.TRITON_NUM_WARPS = setting["block"], setting["num_warps"]
    dispatch.TRITON_CHUNK_TOKENS = setting["chunk_tokens"]


def _step(method: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> Callable[[], torch.Tensor]:
    n_pairs = hidden.shape[0] // 2
    if method in ("sgpo_torch", "sgpo_triton"):
        from sgpo.ops import fused_linear_sequence_logps

        def logps() -> torch.Tensor:
            return fused_linear_sequence_logps(hidden, weight, labels)

    elif method in ("cce", "cce_filter"):
        from cut_cross_entropy import linear_cross_entropy

        eps = "high" if method == "cce_filter" else None

        def logps() -> torch.Tensor:
            loss = linear_cross_entropy(hidden, weight, labels, reduction="none", filter_eps=eps)
            return -loss.float().sum(-1)

    else:
        inner = {"torch": "trl"}.get(method, method)
        return bench_losses._step(inner, hidden, weight, labels, BETA)

    def step() -> torch.Tensor:
        loss = bench_losses._dpo_from_logps(logps(), n_pairs, BETA)
        loss.backward()
        return loss

    return step


def _float32_grads(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h, w = (t.detach().float().requires_grad_() for t in (hidden, weight))
    loss = bench_losses._dpo_from_logps(bench_losses._trl_style_logps(h, w, labels), hidden.shape[0] // 2, BETA)
    return torch.autograd.grad(loss, (h, w))


def _cases(args: argparse.Namespace, head: str) -> list[tuple[int, int, int, int]]:
    hidden, vocab, pairs = (REHEARSAL_HEADS if args.rehearse else HEADS)[head]
    return [(hidden, vocab, n, args.seq_len) for n in pairs]


def _worker(args: argparse.Namespace) -> list[dict]:
    """One method at every case of one head, in this fresh process."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    os.environ["SGPO_KERNELS"] = {"sgpo_torch": "torch", "sgpo_triton": "triton"}.get(args.worker, "")
    timer, rows = bench_losses.timer(device), []
    settings = json.loads(args.settings) if args.settings else {}
    # one tiny step first, so one-time costs (imports, registration, compilation) fall outside the measurement
    _step(args.worker, *bench_losses._inputs(1, 8, 16, 64, dtype, device))()
    for hidden_size, vocab, n_pairs, seq_len in _cases(args, args.head):
        key = f"{hidden_size}x{vocab}x{n_pairs}"
        if args.worker == "sgpo_triton":
            _set_triton(settings[key])
        hidden, weight, labels = bench_losses._inputs(n_pairs, seq_len, hidden_size, vocab, dtype, device)
        step = _step(args.worker, hidden, weight, labels)

        def run(step: Callable[[], torch.Tensor] = step, hidden=hidden, weight=weight) -> torch.Tensor:
            hidden.grad = weight.grad = None
            return step()

        loss, peak = bench_losses.peak_memory(device, run)
        got = (hidden.grad.float(), weight.grad.float())
        seconds = timer(run)
        hidden.grad = weight.grad = None
        want = _float32_grads(hidden, weight, labels)
        error = max(float((g - w).abs().max()) for g, w in zip(got, want))
        row = {"head": args.head, "pairs": n_pairs, "method": args.worker, "loss": float(loss), "seconds": seconds}
        setting = settings[key] if args.worker == "sgpo_triton" else None
        rows.append({**row, "peak_bytes": peak, "grad_error": error, "setting": setting})
        del hidden, weight, labels, step, got, want
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def sweep(args: argparse.Namespace, head: str) -> dict[str, dict]:
    """The fastest Triton setting per case of ``head``, timed in this process."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    os.environ["SGPO_KERNELS"] = "triton"
    grid = REHEARSAL_SWEEP if args.rehearse else SWEEP
    timer, best = bench_losses.timer(device), {}
    for hidden_size, vocab, n_pairs, seq_len in _cases(args, head):
        hidden, weight, labels = bench_losses._inputs(n_pairs, seq_len, hidden_size, vocab, dtype, device)
        step = _step("sgpo_triton", hidden, weight, labels)
        results = []
        for block, chunk, warps in itertools.product(*grid.values()):
            setting = {"block": block, "chunk_tokens": chunk, "num_warps": warps}
            _set_triton(setting)
            hidden.grad = weight.grad = None
            results.append((timer(step), setting))
        seconds, setting = min(results, key=lambda r: r[0])
        best[f"{hidden_size}x{vocab}x{n_pairs}"] = {**setting, "seconds": seconds, "tried": len(results)}
        print(f"sweep {head} {n_pairs} pairs: {setting} in {seconds * 1e3:.2f} ms", file=sys.stderr, flush=True)
    return best


def _run_worker(args: argparse.Namespace, head: str, method: str, settings: dict) -> list[dict]:
    command = [sys.executable, __file__, "--worker", method, "--head", head, "--device", args.device]
    command += ["--dtype", args.dtype, "--seq-len", str(args.seq_len), "--settings", json.dumps(settings)]
    command += ["--rehearse"] if args.rehearse else []
    failed = [{"head": head, "pairs": n, "method": method} for _, _, n, _ in _cases(args, head)]
    if method.startswith("cce") and args.device == "cpu":
        return [{**row, "error": "skipped: Cut Cross-Entropy runs on CUDA only"} for row in failed]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return [{**row, "error": f"timed out after {args.worker_timeout} s"} for row in failed]
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        return [{**row, "error": reason} for row in failed]
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    heads = REHEARSAL_HEADS if args.rehearse else HEADS
    lines = [
        f"{args.dtype}, {args.seq_len} tokens per sequence (the first quarter prompt), forward plus backward of the "
        "sequence log-probs and the DPO loss; errors: largest absolute error of the hidden and head gradients against "
        "float32 materialised PyTorch; ratios against `torch` (materialised PyTorch) of the same case.",
        "",
        "| head (H, V) | pairs | method | time (ms) | time vs torch | peak memory (MB) | memory vs torch | grad error |"
        " setting |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        hidden, vocab, _ = heads[row["head"]]
        head = f"{row['head']} ({hidden:,}, {vocab:,})"
        if "error" in row:
            lines.append(f"| {head} | {row['pairs']} | {row['method']} | {row['error']} | | | | | |")
            continue
        base = next((r for r in rows if r["head"] == row["head"] and r["pairs"] == row["pairs"]), None)
        ok = base is not None and base["method"] == "torch" and "error" not in base

        def ratio(key: str, row: dict = row, base: dict = base, ok: bool = ok) -> str:
            return f"{row[key] / base[key]:.2f}x" if ok and base[key] else "n/a"

        setting = row.get("setting") or {}
        described = ", ".join(f"{k} {setting[k]}" for k in ("block", "chunk_tokens", "num_warps") if k in setting)
        lines.append(
            f"| {head} | {row['pairs']} | {row['method']} | {row['seconds'] * 1e3:.2f} | {ratio('seconds')} | "
            f"{row['peak_bytes'] / 2**20:.0f} | {ratio('peak_bytes')} | {row['grad_error']:.2e} | {described} |"
        )
    return "\n".join(lines) + "\n"


def tuned_entries(rows: list[dict], args: argparse.Namespace, device_name: str) -> list[dict]:
    """Per case, sgpo's fastest backend within ``memory_limit`` times the baseline's peak memory."""
    heads = REHEARSAL_HEADS if args.rehearse else HEADS
    entries = []
    for head, (hidden, vocab, pairs) in heads.items():
        for n in pairs:
            case = [r for r in rows if r["head"] == head and r["pairs"] == n and "error" not in r]
            base = next((r for r in case if r["method"] == "torch"), None)
            ours = [r for r in case if r["method"] in ("sgpo_torch", "sgpo_triton")]
            if base is not None:
                ours = [r for r in ours if r["peak_bytes"] <= args.memory_limit * base["peak_bytes"]] or ours
            if not ours:
                continue
            pick = min(ours, key=lambda r: r["seconds"])
            setting = pick["setting"] if pick["method"] == "sgpo_triton" else {}
            default = {"block": TRITON_BLOCK, "chunk_tokens": TRITON_CHUNK_TOKENS, "num_warps": TRITON_NUM_WARPS}
            entries.append(
                {
                    "device": device_name, "dtype": args.dtype, "hidden": hidden, "vocab": vocab,
                    "tokens": 2 * n * args.seq_len, "backend": pick["method"].removeprefix("sgpo_"),
                    **{key: setting.get(key, value) for key, value in default.items()}, "seconds": pick["seconds"],
                    "peak_bytes": pick["peak_bytes"],
                }
            )  # fmt: skip
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the markdown table (rewritten after each method)")
    parser.add_argument("--tuned-out", type=Path, help="the measured plan for sgpo.ops.dispatch (JSON)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--memory-limit", type=float, default=0.25, help="of the baseline's peak, for --tuned-out")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (1,024; 16 rehearsing)")
    parser.add_argument("--worker-timeout", type=int, default=90, help="seconds for one method's process")
    parser.add_argument("--rehearse", action="store_true", help="tiny heads and sweep, for a CPU")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--head", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seq_len is None:
        args.seq_len = 16 if args.rehearse else 1024
    if args.rehearse and args.device == "cpu":
        # the Triton passes run interpreted on the CPU; the interpreter is chosen when triton is first imported
        os.environ["TRITON_INTERPRET"] = "1"
        args.dtype = "float32"
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    heads = REHEARSAL_HEADS if args.rehearse else HEADS
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    settings = {k: v for head in heads for k, v in sweep(args, head).items()}
    methods = ["torch", *[m for m in args.methods if m != "torch"]]
    rows: list[dict] = []
    for head in heads:
        for method in methods:
            start = time.perf_counter()
            rows += _run_worker(args, head, method, settings)
            print(f"{head} {method}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            rows.sort(key=lambda r: (list(heads).index(r["head"]), r["pairs"], methods.index(r["method"])))
            # rewritten after each method, so that a run stopped part-way keeps what it measured
            if args.out:
                args.out.write_text(markdown(rows, args))
            if args.tuned_out:
                entries = tuned_entries(rows, args, device_name)
                args.tuned_out.write_text(json.dumps({"entries": entries}, indent=1) + "\n")
    print(f"device: {device_name}\n\n{markdown(rows, args)}")
    return 0 if any(r["method"] == "sgpo_triton" and "error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
