"""``make gpu-check``: everything that needs a CUDA device, in three parts of 5 to 7 minutes, into one markdown report.

Part a, correctness:
1. The device tests: the CUDA follower against the CPU path (tests/test_follower_cuda.py), the Triton kernels
   against the PyTorch references in float32, bfloat16 and float16 with the 2x same-dtype error rule, the fused
   linear log-probs against TRL-style PyTorch (tests/test_gpu_kernels.py), packed prefix-shared pairs under
   flex_attention and SDPA against the unpacked forward (tests/test_gpu_packing.py), and the sm_80/sm_90 resource
   checks (tests/test_gpu_compile.py).
2. The follower at n = 1e5, 1e6 and 1e7: CUDA against the C++ CPU path, time and equal results
   (benchmarks/bench_follower.py).

Part b, against TRL and Liger:
3. The fused linear log-probs plus DPO loss, forward and backward, at Liger's benchmark shape (bfloat16, H = 4,096,
   V = 128,256, T = 1,024, 2 to 16 pairs) against TRL-style PyTorch, TRL's fused LM head and Liger's
   LigerFusedLinearDPOLoss (benchmarks/bench_losses.py).
4. One SGPODPOTrainer step against trl.DPOTrainer on a randomly initialised Llama-3.2-1B-shaped model, bfloat16,
   8 pairs of 512 tokens, LoRA and full fine-tuning (benchmarks/bench_trl.py).

Part c, the fused LM head (benchmarks/bench_fused_head.py):
5. An in-process sweep of the Triton path's vocabulary block, token chunk and num_warps, then each method in a fresh
   process at Llama-3's head (H = 4,096, V = 128,256; 2 and 4 pairs of 1,024 tokens) and SmolLM2's (H = 576,
   V = 49,152; 4 and 8 pairs), bfloat16: materialised PyTorch, sgpo's PyTorch path, sgpo's Triton path at its best
   setting, TRL's fused head, Liger, Cut Cross-Entropy with gradient filtering off and on; time, peak memory and
   gradient error against float32. Writes the measured plan ``fused_linear_tuned.json`` beside the report.

Each step has a time limit and the report is rewritten after each, so a part ends within its limit even when a step
hangs, and a part stopped from outside keeps the steps it finished. Exit status 0 only when every step passed.
``--rehearse`` runs the same steps on the CPU at tiny shapes (the CUDA tests skip), which is how the tests keep this
script working between GPU runs.

    python scripts/gpu_check.py --out gpu_check.md              # every part
    python scripts/gpu_check.py --part a --out device_check_a.md
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE_TESTS = (
    "tests/test_follower_cuda.py",
    "tests/test_gpu_kernels.py",
    "tests/test_gpu_packing.py",
    "tests/test_gpu_compile.py",
)
# What the report lists the versions of: the image's own packages and the carried ones.
PACKAGES = (
    "torch", "triton", "transformers", "trl", "peft", "accelerate", "datasets", "liger-kernel", "cut-cross-entropy",
    "pyarrow",
)  # fmt: skip


@dataclass
class Step:
    title: str
    part: str
    argv: list[str]
    timeout_s: int
    table: str | None = None  # the markdown file the step writes, shown in the report


def steps(python: str, scratch: Path, rehearse: bool = False, report_dir: Path | None = None) -> list[Step]:
    """The check's steps; on a GPU part a's limits add up to 4.5 minutes, part b's to 7.5 and part c's to 7, each
    under the 10 minutes one command may take with the build. ``rehearse``: the same steps at CPU-sized shapes.
    ``report_dir``: where part c writes its measured plan (default ``scratch``)."""
    follower_sizes = ["2000", "100000"] if rehearse else ["100000", "1000000", "10000000"]
    liger_shape = (
        ["--hidden", "64", "--vocab", "1000", "--seq-lens", "64", "--pairs", "2", "--device", "cpu", "--repeats", "1"]
        if rehearse
        else ["--hidden", "4096", "--vocab", "128256", "--seq-lens", "1024", "--pairs", "2", "4", "8", "16"]
    )
    trainer = (
        ["--model", "tiny", "--batch", "2", "--prompt-tokens", "24", "--response-tokens", "16", "--steps", "1"]
        + ["--modes", "lora", "--baselines", "defaults"]
        if rehearse
        else ["--model", "llama-1b", "--batch", "8", "--prompt-tokens", "256", "--response-tokens", "256"]
        + ["--steps", "3", "--modes", "lora", "full", "--baselines", "defaults", "precompute-no-checkpointing"]
    )
    return [
        Step("Device tests", "a", [python, "-m", "pytest", *DEVICE_TESTS, "-q", "-rs", "-p", "no:cacheprovider"], 150),
        Step(
            "Follower: CUDA against the C++ CPU path",
            "a",
            [python, "benchmarks/bench_follower.py", "--sizes", *follower_sizes]
            + ["--torch-max-n", "100000", "--paper-groups", "0", "--out", str(scratch / "follower.md")],
            120,
            table=str(scratch / "follower.md"),
        ),
        Step(
            "Fused linear log-probs plus DPO loss at Liger's shape: TRL, TRL's fused head, Liger, sgpo",
            "b",
            [python, "benchmarks/bench_losses.py", *liger_shape]
            + ["--methods", "trl", "trl_fused", "liger", "sgpo_fused", "--out", str(scratch / "losses.md")],
            210,
            table=str(scratch / "losses.md"),
        ),
        Step(
            "One training step: SGPODPOTrainer against trl.DPOTrainer",
            "b",
            [python, "benchmarks/bench_trl.py", *trainer, "--repeats", "1", "--threads", "4"]
            + ["--out", str(scratch / "trainer.md")],
            240,
            table=str(scratch / "trainer.md"),
        ),
        Step(
            "Fused LM head: sgpo's Triton path against materialised PyTorch, TRL, Liger and Cut Cross-Entropy",
            "c",
            [python, "benchmarks/bench_fused_head.py", *(["--rehearse"] if rehearse else [])]
            + ["--out", str(scratch / "fused_head.md")]
            + ["--tuned-out", str((report_dir or scratch) / "fused_linear_tuned.json")],
            420,
            table=str(scratch / "fused_head.md"),
        ),
    ]


def versions() -> str:
    """One line of the versions of PACKAGES as this interpreter sees them."""
    from sgpo.info import package_version

    return ", ".join(f"{name} {package_version(name)}" for name in PACKAGES)


def build_summary() -> str:
    """How the sgpo this interpreter imports was built, and where it lives."""
    import sgpo
    from sgpo import _C

    info = _C.build_info()
    cuda = f"CUDA follower for sm_{info['cuda_archs'].replace(',', ', sm_')}" if info["cuda"] else "no CUDA follower"
    return f"sgpo {sgpo.__version__} from {Path(sgpo.__file__).parent} ({cuda}, {info['compiler']})"


def device_summary() -> str | None:
    """One line naming the GPU and how sgpo was built, or None when no CUDA device is usable."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return (
        f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB), CUDA "
        f"{torch.version.cuda}, Python {platform.python_version()}"
    )


def run_step(step: Step) -> tuple[str, float, str]:
    """(status, seconds, output tail) of one step."""
    start = time.perf_counter()
    try:
        done = subprocess.run(step.argv, cwd=ROOT, capture_output=True, text=True, timeout=step.timeout_s)
        status = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        status = f"timed out after {step.timeout_s} s"
        output = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    return status, time.perf_counter() - start, "\n".join(output.strip().splitlines()[-40:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_check.md", help="the markdown report")
    parser.add_argument(
        "--part",
        choices=["a", "b", "c", "all"],
        default="all",
        help="a: correctness; b: against TRL/Liger; c: fused head",
    )
    parser.add_argument("--rehearse", action="store_true", help="run on the CPU at tiny shapes (CUDA tests skip)")
    args = parser.parse_args(argv)

    device = device_summary()
    if device is None and not args.rehearse:
        args.out.write_text("# sgpo GPU check\n\nNo CUDA device is visible to torch: nothing was checked.\n")
        print(f"no CUDA device: nothing to check (wrote {args.out})", file=sys.stderr)
        return 2
    if device is None:
        device = f"no CUDA device: a rehearsal on the CPU at tiny shapes, Python {platform.python_version()}"

    title = "sgpo GPU check" + ("" if args.part == "all" else f", part {args.part}")
    lines = [f"# {title}", "", f"Device: {device}", "", f"Build: {build_summary()}", "", f"Software: {versions()}", ""]
    args.out.write_text("\n".join(lines))
    all_passed = True
    with tempfile.TemporaryDirectory() as tmp:
        for step in steps(sys.executable, Path(tmp), args.rehearse, args.out.parent):
            if args.part not in ("all", step.part):
                continue
            print(f"== {step.title}: {' '.join(step.argv)}", file=sys.stderr, flush=True)
            status, seconds, tail = run_step(step)
            all_passed &= status == "passed"
            print(f"   {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
            lines += [f"## {step.title}: {status} ({seconds:.0f} s)", "", f"`{' '.join(step.argv[1:])}`", ""]
            table = Path(step.table) if step.table else None
            if table and table.is_file():
                lines += [table.read_text().strip(), ""]
            if status != "passed" or not (table and table.is_file()):
                lines += ["```", tail, "```", ""]
            args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
