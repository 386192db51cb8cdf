"""Forward + backward of a DPO step's lm_head and loss: TRL-style PyTorch vs sgpo vs Liger-Kernel.

Each case (sequence length T, number of pairs) runs each method in a fresh process, so its peak memory is its own:
on CPU the growth of ``ru_maxrss`` over the process's size after building the inputs (torch's CPU allocations are
invisible to tracemalloc), on GPU ``torch.cuda.max_memory_allocated`` over the memory held by the inputs. Times are the
median of ``--repeats`` runs after one warm-up (``triton.testing.do_bench`` on GPU). Everything is reported as a ratio
to the TRL-style baseline of the same run, as a markdown table.

Methods (all compute the policy's sequence log-probs of the chosen and rejected responses and the sigmoid DPO loss,
with reference log-probs 0 so that every method computes the same number, which the script checks):
  trl          logits = x @ W.T, log_softmax in float32, gather, masked sum (what TRL's DPOTrainer does)
  sgpo_logits  logits = x @ W.T, then sgpo.ops.sequence_logps and sgpo.ops.preference_loss
  sgpo_fused   sgpo.nn.FusedLinearPreferenceLoss (the (B, T, V) logits never exist)
  trl_fused    TRL's fused LM head (trl.trainer.utils.add_fused_lm_head: per-token log-probs in tiles, Triton on
               CUDA), then the same masked sum and loss as ``trl``
  liger        liger_kernel's LigerFusedLinearDPOLoss (torch.compile'd on CUDA, its default; uncompiled on CPU)

    python benchmarks/bench_losses.py                       # H=576, V=49152 (SmolLM2-135M), T in {256, 1024}, 4/8 pairs
    python benchmarks/bench_losses.py --seq-lens 256 --pairs 4 --repeats 5 --out bench.md
    python benchmarks/bench_losses.py --hidden 4096 --vocab 128256 --seq-lens 1024 --pairs 2 4 8 16  # Liger's shape

``--out`` is rewritten after every case, so a run stopped part-way keeps the cases it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F

METHODS = ("trl", "sgpo_logits", "sgpo_fused", "trl_fused", "liger")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timer(device: torch.device, repeats: int = 3) -> Callable[[Callable[[], object]], float]:
    """Seconds per call of a function: ``triton.testing.do_bench`` on a GPU, else the median of ``repeats`` calls."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn) / 1e3

    def median(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return median


def peak_memory(device: torch.device, fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``fn()`` and the peak memory it took above what was allocated before (the process's peak RSS on a CPU)."""
    if device.type != "cuda":
        base = max(_rss_bytes(), _maxrss_bytes())
        out = fn()
        return out, max(_maxrss_bytes() - base, 0)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - base


def _trl_style_logps(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """What TRL's DPOTrainer does: logits = x @ W.T, log_softmax in float32, gather, masked sum (or mean) per row."""
    logprobs = torch.log_softmax((hidden @ weight.t()).float(), dim=-1)
    mask = labels != -100
    token = logprobs.gather(-1, torch.where(mask, labels, 0).unsqueeze(-1)).squeeze(-1)
    return (token * mask).sum(-1) / (mask.sum(-1) if average else 1)


def _dpo_from_logps(logps: torch.Tensor, n_pairs: int, beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * (logps[:n_pairs] - logps[n_pairs:])).mean()


# the reference-free pair losses: sgpo.nn's drop-in and Liger's class, built with the same arguments (the NLL term
# off, so every method computes the same number); average: the paper's per-token mean log-probs
REFERENCE_FREE = {
    "simpo": ("FusedLinearSimPOLoss", "LigerFusedLinearSimPOLoss", True),
    "cpo": ("FusedLinearCPOLoss", "LigerFusedLinearCPOLoss", False),
    "orpo": ("FusedLinearORPOLoss", "LigerFusedLinearORPOLoss", True),
}


def _reference_free_step(
    loss: str, method: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, beta: float
) -> Callable:
    """One forward and backward of a reference-free pair loss by ``method`` (trl: logits, log_softmax, gather and
    sgpo.reference's formula in PyTorch; sgpo_fused: sgpo.nn's class; liger: Liger's class)."""
    ours, theirs, average = REFERENCE_FREE[loss]
    n_pairs = hidden.shape[0] // 2
    if method == "trl":
        from sgpo.reference import preference_losses_reference

        def step() -> torch.Tensor:
            logps = _trl_style_logps(hidden, weight, labels, average)
            out = preference_losses_reference(logps[:n_pairs], logps[n_pairs:], loss_type=loss, beta=beta)
            value = out.losses.mean()
            value.backward()
            return value

        return step
    options = {"beta": beta, "compute_nll_loss": False}
    if method == "sgpo_fused":
        import sgpo.nn

        loss_fn = getattr(sgpo.nn, ours)(**options)
    else:
        import liger_kernel.chunked_loss as liger

        loss_fn = getattr(liger, theirs)(**options, compiled=hidden.device.type == "cuda")

    def step() -> torch.Tensor:
        value = loss_fn(weight, hidden, labels)[0]
        value.backward()
        return value

    return step


def _step(
    method: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, beta: float, loss: str = "dpo"
) -> Callable:
    if loss != "dpo":
        return _reference_free_step(loss, method, hidden, weight, labels, beta)
    n_pairs = hidden.shape[0] // 2
    zeros = torch.zeros(n_pairs, device=hidden.device)

    if method == "trl":

        def step() -> torch.Tensor:
            loss = _dpo_from_logps(_trl_style_logps(hidden, weight, labels), n_pairs, beta)
            loss.backward()
            return loss

    elif method == "sgpo_logits":
        from sgpo.ops import preference_loss, sequence_logps

        def step() -> torch.Tensor:
            logps = sequence_logps(hidden @ weight.t(), labels)
            loss = preference_loss(logps[:n_pairs], logps[n_pairs:], zeros, zeros, beta=beta)
            loss.backward()
            return loss

    elif method == "sgpo_fused":
        from sgpo.nn import FusedLinearPreferenceLoss

        loss_fn = FusedLinearPreferenceLoss(beta=beta)

        def step() -> torch.Tensor:
            loss, _ = loss_fn(weight, hidden, labels, ref_chosen_logps=zeros, ref_rejected_logps=zeros)
            loss.backward()
            return loss

    elif method == "trl_fused":
        head_only = _trl_fused_head(weight)

        def step() -> torch.Tensor:
            token = head_only(hidden, labels).log_probs
            loss = _dpo_from_logps(token.sum(-1), n_pairs, beta)
            loss.backward()
            return loss

    else:
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        compiled = hidden.device.type == "cuda"
        loss_fn = LigerFusedLinearDPOLoss(beta=beta, compiled=compiled, use_ref_model=False)

        def step() -> torch.Tensor:
            loss, _ = loss_fn(weight, hidden, labels)
            loss.backward()
            return loss

    return step


def _trl_fused_head(weight: torch.Tensor) -> Callable:
    """TRL's fused LM head, as ``add_fused_lm_head`` installs it on a causal LM, over a model whose backbone returns
    the benchmark's hidden states: ``head(hidden, labels).log_probs`` are the per-token log-probs (0 where ignored)."""
    from transformers import PretrainedConfig
    from transformers.modeling_outputs import BaseModelOutput
    from trl.trainer.utils import add_fused_lm_head

    class Backbone(torch.nn.Module):
        def forward(self, hidden_states: torch.Tensor, **_: object) -> BaseModelOutput:
            return BaseModelOutput(last_hidden_state=hidden_states)

    class HeadOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = PretrainedConfig(vocab_size=weight.shape[0], hidden_size=weight.shape[1])
            self.base_model = Backbone()

        def get_output_embeddings(self) -> SimpleNamespace:
            # The head's weight is the benchmark's own leaf tensor, so its gradient lands where the other methods' do.
            return SimpleNamespace(weight=weight, bias=None)

        def forward(self, hidden_states: torch.Tensor, **kwargs: object) -> object:
            raise NotImplementedError("only the fused forward is benchmarked")

    model = HeadOnly()
    add_fused_lm_head(model)
    # The labels are already aligned with the hidden states (no next-token shift), so they go in as shift_labels.
    return lambda hidden, labels: model(hidden, fused_lm_head=True, shift_labels=labels)


def _inputs(
    n_pairs: int, seq_len: int, hidden_size: int, vocab: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Filled in place where they live, so that building the inputs leaves no transient above the process's size (and
    # a GPU draws the 0.5G numbers of a Llama-3 head in milliseconds rather than the CPU's seconds).
    generator = torch.Generator(device=device).manual_seed(0)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device=device).normal_(0.0, std, generator=generator).requires_grad_()

    weight = normal(vocab, hidden_size, std=0.02)
    hidden = normal(2 * n_pairs, seq_len, hidden_size, std=1.0)
    labels = torch.randint(0, vocab, (2 * n_pairs, seq_len), generator=generator, device=device)
    labels[:, : seq_len // 4] = -100  # the prompt
    return hidden, weight, labels


def _worker(args: argparse.Namespace) -> dict:
    """One method on one case, in this (fresh) process."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    # A tiny run first, so one-time costs (lazy imports, op registration, thread pools) fall before the baseline.
    _step(args.worker, *_inputs(1, 8, 16, 64, dtype, device), beta=0.1, loss=args.loss)()
    hidden, weight, labels = _inputs(args.n_pairs, args.seq_len, args.hidden, args.vocab, dtype, device)
    step = _step(args.worker, hidden, weight, labels, beta=0.1, loss=args.loss)

    def run() -> torch.Tensor:
        weight.grad = hidden.grad = None
        return step()

    loss, peak = peak_memory(device, run)
    seconds = timer(device, args.repeats)(run)
    return {"method": args.worker, "loss": float(loss), "seconds": seconds, "peak_bytes": peak}


def _device_bandwidth() -> float | None:
    """Theoretical memory bandwidth in GB/s of the current GPU, when torch reports its memory clock and bus."""
    props = torch.cuda.get_device_properties(0)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def _run_case(args: argparse.Namespace, seq_len: int, n_pairs: int, method: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--seq-len",
        str(seq_len),
        "--n-pairs",
        str(n_pairs),
        "--hidden",
        str(args.hidden),
        "--vocab",
        str(args.vocab),
        "--dtype",
        args.dtype,
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--loss",
        args.loss,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"method": method, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict], args: argparse.Namespace) -> str:
    on_gpu = args.device.startswith("cuda")
    bandwidth = _device_bandwidth() if on_gpu else None
    head = "| T | pairs | method | time (s) | time vs TRL | peak memory (MB) | memory vs TRL |"
    rule = "|---|---|---|---|---|---|---|"
    if bandwidth:
        head += f" logits GB/s (of {bandwidth:.0f}) |"
        rule += "---|"
    lines = [head, rule]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['T']} | {row['pairs']} | {row['method']} | failed: {row['error']} | | | |")
            continue
        base = next(r for r in rows if r["T"] == row["T"] and r["pairs"] == row["pairs"] and r["method"] == "trl")

        def ratio(key: str, row: dict = row, base: dict = base) -> str:
            return f"{row[key] / base[key]:.2f}x" if key in base else "n/a (baseline failed)"

        line = (
            f"| {row['T']} | {row['pairs']} | {row['method']} | {row['seconds']:.3f} | {ratio('seconds')} | "
            f"{row['peak_bytes'] / 2**20:.0f} | {ratio('peak_bytes')} |"
        )
        if bandwidth:
            # Traffic of the unfused logits a loss must at least read and write back: (B, T, V) once each way.
            logits_bytes = (
                2 * 2 * row["pairs"] * row["T"] * args.vocab * torch.finfo(getattr(torch, args.dtype)).bits / 8
            )
            line += f" {logits_bytes / row['seconds'] / 1e9:.0f} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--pairs", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--loss",
        default="dpo",
        choices=["dpo", *REFERENCE_FREE],
        help="dpo (sigmoid, every method) or a reference-free pair loss (methods trl, sgpo_fused, liger)",
    )
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on GPU by default")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (CPU; GPU uses do_bench)")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n-pairs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    methods = ["trl", *[m for m in args.methods if m != "trl"]]
    if args.loss != "dpo":
        methods = [m for m in methods if m in ("trl", "sgpo_fused", "liger")]
    rows = []
    for seq_len in args.seq_lens:
        for n_pairs in args.pairs:
            for method in methods:
                row = {"T": seq_len, "pairs": n_pairs, **_run_case(args, seq_len, n_pairs, method)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if args.out:
                    with open(args.out, "w") as handle:
                        handle.write(_table(rows, args) + "\n")
            losses = [r["loss"] for r in rows if r["T"] == seq_len and r["pairs"] == n_pairs and "loss" in r]
            if max(losses) - min(losses) > 1e-3 * max(1.0, abs(losses[0])):
                print(
                    f"warning: T={seq_len}, pairs={n_pairs}: the methods disagree on the loss {losses}", file=sys.stderr
                )
    table = _table(rows, args)
    print(
        f"{args.loss} loss, H={args.hidden}, V={args.vocab}, {args.dtype} on {args.device}, prompts masked on the "
        "first quarter; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
