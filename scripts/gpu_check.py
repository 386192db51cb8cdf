"""``make gpu-check``: everything that needs a CUDA device, in one run, into one markdown report.

1. The device tests: the CUDA follower against the CPU path (tests/test_follower_cuda.py), the Triton kernels
   against the PyTorch references in float32, bfloat16 and float16 and the fused linear log-probs against TRL-style
   PyTorch (tests/test_gpu_kernels.py), and the sm_80/sm_90 resource checks (tests/test_gpu_compile.py).
2. The follower benchmark with its CUDA column (benchmarks/bench_follower.py).
3. The loss benchmark on the device (benchmarks/bench_losses.py --device cuda).

Each step has a time limit, so the whole check ends within 10 minutes on one H100-class GPU even when a step hangs;
the report says which steps passed, failed or ran out of time. Exit status 0 only when every step passed.

    python scripts/gpu_check.py --out gpu_check.md
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
DEVICE_TESTS = ("tests/test_follower_cuda.py", "tests/test_gpu_kernels.py", "tests/test_gpu_compile.py")


@dataclass
class Step:
    title: str
    argv: list[str]
    timeout_s: int
    table: str | None = None  # the markdown file the step writes, shown in the report


def steps(python: str, scratch: Path) -> list[Step]:
    """The check's steps; the time limits add up to 8.5 minutes."""
    return [
        Step("Device tests", [python, "-m", "pytest", *DEVICE_TESTS, "-q", "-rs", "-p", "no:cacheprovider"], 150),
        Step(
            "Follower benchmark",
            [
                python,
                "benchmarks/bench_follower.py",
                "--sizes",
                "2000",
                "1000000",
                "10000000",
                "--torch-max-n",
                "1000000",
                "--paper-groups",
                "0",
                "--out",
                str(scratch / "follower.md"),
            ],
            120,
            table=str(scratch / "follower.md"),
        ),
        Step(
            "Loss benchmark",
            [
                python,
                "benchmarks/bench_losses.py",
                "--device",
                "cuda",
                "--seq-lens",
                "1024",
                "4096",
                "--pairs",
                "4",
                "8",
                "--out",
                str(scratch / "losses.md"),
            ],
            240,
            table=str(scratch / "losses.md"),
        ),
    ]


def device_summary() -> str | None:
    """One line naming the GPU and the software, or None when no CUDA device is usable."""
    import torch

    if not torch.cuda.is_available():
        return None
    import sgpo

    props = torch.cuda.get_device_properties(0)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return (
        f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB); torch {torch.__version__}"
        f" (CUDA {torch.version.cuda}), triton {triton_version}, sgpo {sgpo.__version__}, Python "
        f"{platform.python_version()}"
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
    args = parser.parse_args(argv)

    device = device_summary()
    if device is None:
        args.out.write_text("# sgpo GPU check\n\nNo CUDA device is visible to torch: nothing was checked.\n")
        print(f"no CUDA device: nothing to check (wrote {args.out})", file=sys.stderr)
        return 2

    lines = ["# sgpo GPU check", "", f"Device: {device}", ""]
    all_passed = True
    with tempfile.TemporaryDirectory() as tmp:
        for step in steps(sys.executable, Path(tmp)):
            print(f"== {step.title}: {' '.join(step.argv)}", file=sys.stderr, flush=True)
            status, seconds, tail = run_step(step)
            all_passed &= status == "passed"
            print(f"   {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
            lines += [f"## {step.title}: {status} ({seconds:.0f} s)", "", f"`{' '.join(step.argv[1:])}`", ""]
            if step.table and Path(step.table).is_file():
                lines += [Path(step.table).read_text().strip(), ""]
            lines += ["```", tail, "```", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
