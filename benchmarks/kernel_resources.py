"""Registers, local memory and shared memory of every GPU kernel of sgpo, compiled for sm_80 and sm_90 without a GPU.

Triton kernels: each case calls the real host function (``sgpo.kernels.logps``, ``sgpo.kernels.preference``,
``sgpo.kernels.fused_logps``) on meta
tensors of a real shape; the launch is intercepted, specialised by Triton's own argument binder (types, 16-byte
divisibility, constexprs, num_warps) for the target, and compiled ahead of time to a cubin, whose resource usage
``cuobjdump`` (shipped with Triton) reads. What is compiled is therefore what the launch would compile on that GPU.

CUDA follower: ``csrc/*.cu`` compiled by ``nvcc --resource-usage`` with the flags CMakeLists.txt gives them.

Results are cached under ``$SGPO_CACHE/kernel_resources`` (see ``sgpo.models.cache_dir``), keyed by everything that
decides the machine code: kernel sources, specialisation, options, target and compiler versions.

    python benchmarks/kernel_resources.py --out kernel_resources.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]

# Largest shared memory one block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin), CUDA C++ Programming
# Guide, "Technical Specifications per Compute Capability": 163 KB on 8.0 (A100), 227 KB on 9.0 (H100, H200).
SHARED_LIMITS = {80: 163 * 1024, 90: 227 * 1024}
ARCHS = tuple(SHARED_LIMITS)

# Vocabulary sizes of the models users train: Llama 2 / Mistral, SmolLM2, Llama 3, Qwen2 / Qwen2.5.
VOCABS = {"Llama-2": 32_000, "SmolLM2": 49_152, "Llama-3": 128_256, "Qwen2": 151_936}
LOGITS_DTYPES = ("float32", "bfloat16", "float16")
# DESIGN 1.1's losses in every input dtype; the kernel's other per-pair types (TRL's table, SimPO, CPO, ORPO; aot sorts
# the batch in PyTorch and reuses the sigmoid branch) and the f-divergence branches in bfloat16, the training dtype.
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "sppo_hard", "sppo", "ssapo")
# The paper's K = 6, one piece, and wider worst cases: BLOCK_K 8, 1, 16 and 64.
PIECES = (6, 1, 16, 64)


def cache_root() -> Path:
    from sgpo.models import cache_dir

    return cache_dir() / "kernel_resources"


@dataclass
class Resources:
    """Per-thread registers and local memory, per-block shared memory of one compiled kernel."""

    registers: int
    stack: int  # bytes of stack frame per thread: where spilled registers go
    local: int  # bytes of other local memory per thread
    shared: int  # bytes of dynamic shared memory the launch requests
    static_shared: int  # bytes of shared memory fixed in the binary
    spill_stores: int = 0  # bytes, where the compiler reports them (nvcc)
    spill_loads: int = 0
    compile_s: float = 0.0
    cached: bool = field(default=False, compare=False)


def violations(res: Resources, arch: int) -> list[str]:
    """What makes a kernel unfit for ``arch``: spills, local memory, or more shared memory than a block may have."""
    found = []
    if res.spill_stores or res.spill_loads:
        found.append(f"spills {res.spill_stores} bytes stored / {res.spill_loads} bytes loaded per thread")
    if res.stack or res.local:
        found.append(f"uses local memory: {res.stack} bytes stack frame, {res.local} bytes local per thread")
    total = res.shared + res.static_shared
    if total > SHARED_LIMITS[arch]:
        found.append(f"needs {total} bytes of shared memory per block; sm_{arch} allows {SHARED_LIMITS[arch]}")
    return found


def _cache_get(cache: Path | None, key: str) -> Resources | None:
    if cache is None or not (cache / f"{key}.json").is_file():
        return None
    return Resources(**json.loads((cache / f"{key}.json").read_text()), cached=True)


def _cache_put(cache: Path | None, key: str, res: Resources) -> None:
    if cache is None:
        return
    cache.mkdir(parents=True, exist_ok=True)
    data = asdict(res)
    data.pop("cached")
    tmp = cache / f".{key}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(cache / f"{key}.json")


# ---------------------------------------------------------------------------------------------------------------------
# Triton


@dataclass(frozen=True)
class TritonCase:
    """One launch of a Triton kernel: which kernel, which constexpr branch, which input dtype and vocabulary."""

    kernel: str
    branch: str
    dtype: str
    vocab: int | None
    launch: Callable[[], None] = field(compare=False, repr=False)

    @property
    def id(self) -> str:
        vocab = f"-V{self.vocab}" if self.vocab else ""
        return f"{self.kernel}-{self.branch}-{self.dtype}{vocab}".replace(" ", "").replace(",", "-")


@dataclass
class Captured:
    """A launch intercepted before it reached the GPU: the kernel and the arguments it was called with."""

    fn: Any
    args: tuple
    kwargs: dict


@contextmanager
def intercept_launches() -> Iterator[list[Captured]]:
    """Within the block, Triton launches record their kernel and arguments instead of running."""
    from triton.runtime.jit import JITFunction

    calls: list[Captured] = []

    def record(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        calls.append(Captured(self, args, kwargs))

    with mock.patch.object(JITFunction, "run", record):
        yield calls


def capture(case: TritonCase) -> list[Captured]:
    with intercept_launches() as calls:
        case.launch()
    if not calls:
        raise RuntimeError(f"case {case.id}: the host function launched no Triton kernel")
    return calls


def _logps_cases(shapes: dict[int, tuple[int, int]], dtypes: tuple[str, ...]) -> list[TritonCase]:
    import torch
    from sgpo.kernels import logps

    cases = []
    for vocab, (batch, seq_len) in shapes.items():
        for name in dtypes:
            dtype = getattr(torch, name)

            def forward(vocab: int = vocab, batch: int = batch, seq_len: int = seq_len, dtype: Any = dtype) -> None:
                logits = torch.empty(batch, seq_len, vocab, dtype=dtype, device="meta")
                labels = torch.empty(batch, seq_len, dtype=torch.int64, device="meta")
                logps.token_logps_forward(logits, labels, -100)

            def backward(vocab: int = vocab, batch: int = batch, seq_len: int = seq_len, dtype: Any = dtype) -> None:
                logits = torch.empty(batch, seq_len, vocab, dtype=dtype, device="meta")
                labels = torch.empty(batch, seq_len, dtype=torch.int64, device="meta")
                lse = torch.empty(batch, seq_len, dtype=torch.float32, device="meta")
                grad = torch.empty(batch, seq_len, dtype=torch.float32, device="meta")
                logps.token_logps_backward(grad, logits, labels, lse, -100, logits)

            branch = f"B={batch}, T={seq_len}"
            cases.append(TritonCase("token_logps_fwd", branch, name, vocab, forward))
            cases.append(TritonCase("token_logps_bwd", branch, name, vocab, backward))
    return cases


def _preference_cases(dtypes: tuple[str, ...], pieces: tuple[int, ...]) -> list[TritonCase]:
    import torch
    from sgpo.kernels.preference import preference_pair_losses

    batch = 64
    cases = []
    for loss_type in LOSS_TYPES:
        spaces = ("probability", "margin") if loss_type == "ssapo" else ("probability",)
        lengths = (False, True) if loss_type == "ipo" else (False,)
        for space in spaces:
            for k in pieces if loss_type == "ssapo" else (None,):
                for weighted in (False, True):
                    for with_lengths in lengths:
                        for name in dtypes:
                            dtype = getattr(torch, name)

                            def launch(
                                loss_type: str = loss_type,
                                space: str = space,
                                k: int | None = k,
                                weighted: bool = weighted,
                                with_lengths: bool = with_lengths,
                                dtype: Any = dtype,
                            ) -> None:
                                def vec() -> torch.Tensor:
                                    return torch.empty(batch, dtype=dtype, device="meta")

                                win = (vec(), vec()) if loss_type == "sppo" else (None, None)
                                worst = (None, None)
                                if k is not None:
                                    worst = tuple(torch.empty(batch, k, dtype=dtype, device="meta") for _ in range(2))
                                lens = (vec(), vec()) if with_lengths else (None, None)
                                pair_weights = vec() if weighted else None
                                logps4 = (vec(), vec(), vec(), vec())
                                preference_pair_losses(
                                    *logps4, *win, *worst, pair_weights, *lens, loss_type, 0.1, 0.0, space
                                )

                            parts = [loss_type]
                            if loss_type == "ssapo":
                                parts += [space, f"K={k}"]
                            if weighted:
                                parts.append("weights")
                            if with_lengths:
                                parts.append("lengths")
                            cases.append(TritonCase("preference", " ".join(parts), name, None, launch))
    return cases + _more_preference_cases()


def _more_preference_cases() -> list[TritonCase]:
    """The kernel's other per-pair branches and the f-divergences of the sigmoid branch, bfloat16, with and without
    per-pair weights (and lengths where the loss normalises by them)."""
    import torch
    from sgpo.kernels.preference import preference_pair_losses
    from sgpo.loss_args import BATCH_COUPLED, F_DIVERGENCES, LENGTH_NORMALISED
    from sgpo.loss_args import LOSS_TYPES as ALL_LOSS_TYPES

    batch, dtype = 64, torch.bfloat16
    more = [t for t in ALL_LOSS_TYPES if t not in LOSS_TYPES and t not in BATCH_COUPLED]
    branches = [(t, "reverse_kl") for t in more] + [("sigmoid", f) for f in F_DIVERGENCES if f != "reverse_kl"]
    cases = []
    for loss_type, divergence in branches:
        for weighted in (False, True):

            def launch(loss_type: str = loss_type, divergence: str = divergence, weighted: bool = weighted) -> None:
                def vec() -> torch.Tensor:
                    return torch.empty(batch, dtype=dtype, device="meta")

                lens = (vec(), vec()) if loss_type in LENGTH_NORMALISED else (None, None)
                smoothing = 0.1 if loss_type == "exo_pair" else 0.0
                preference_pair_losses(
                    vec(), vec(), vec(), vec(), None, None, None, None, vec() if weighted else None, *lens,
                    loss_type, 0.1, smoothing, "probability", f_divergence_type=divergence,
                )  # fmt: skip

            parts = (
                [loss_type] + ([divergence] if divergence != "reverse_kl" else []) + (["weights"] if weighted else [])
            )
            cases.append(TritonCase("preference", " ".join(parts), "bfloat16", None, launch))
    return cases


# The fused head's passes: every num_warps the device benchmark sweeps, over a (4,096 tokens x 8,192 columns) tile.
FUSED_HEAD_WARPS = (4, 8)


def _fused_head_cases(dtypes: tuple[str, ...]) -> list[TritonCase]:
    """Both passes of ``sgpo.kernels.fused_logps`` in every constexpr branch: the forward with and without WPO's sum
    of squares and the label check, the backward with and without a bias; every num_warps in bfloat16, the default
    one in the other dtypes."""
    import torch
    from sgpo.kernels import fused_logps

    rows, width, vocab = 4096, 8192, VOCABS["Llama-3"]
    cases = []
    for name in dtypes:
        dtype = getattr(torch, name)
        warps = FUSED_HEAD_WARPS if name == "bfloat16" else (8,)
        for num_warps in warps:
            for with_sum_sq in (False, True):
                for check in (False, True):

                    def fold(
                        dtype: Any = dtype, w: int = num_warps, sq: bool = with_sum_sq, check: bool = check
                    ) -> None:
                        def vec() -> torch.Tensor:
                            return torch.empty(rows, dtype=torch.float32, device="meta")

                        tile = torch.empty(rows, width, dtype=dtype, device="meta")
                        labels = torch.empty(rows, dtype=torch.int64, device="meta")
                        flag = torch.empty(1, dtype=torch.int32, device="meta")
                        fused_logps.fold_tile(
                            tile, labels, 0, vocab, vec(), vec(), vec(), vec() if sq else None, flag, check, w
                        )

                    branch = (
                        f"{'sum_sq' if with_sum_sq else 'plain'} {'check' if check else 'no-check'} warps={num_warps}"
                    )
                    cases.append(TritonCase("fused_fold", branch, name, None, fold))
            for with_bias in (False, True):

                def grad(dtype: Any = dtype, w: int = num_warps, with_bias: bool = with_bias) -> None:
                    def vec(n: int = rows) -> torch.Tensor:
                        return torch.empty(n, dtype=torch.float32, device="meta")

                    tile = torch.empty(rows, width, dtype=dtype, device="meta")
                    labels = torch.empty(rows, dtype=torch.int64, device="meta")
                    fused_logps.grad_tile(tile, labels, 0, vec(), vec(), vec(vocab) if with_bias else None, w)

                branch = f"{'bias' if with_bias else 'no-bias'} warps={num_warps}"
                cases.append(TritonCase("fused_grad", branch, name, None, grad))
    return cases


def triton_cases(full: bool = True) -> list[TritonCase]:
    """Every kernel x constexpr branch x input dtype x real vocabulary; ``full=False`` keeps every kernel and branch
    but only bfloat16 inputs, the dtype training runs in."""
    dtypes = LOGITS_DTYPES if full else ("bfloat16",)
    shapes = {vocab: (4, 1024) for vocab in VOCABS.values()}
    # 8 x 16,384 tokens of Qwen2's vocabulary: the batch stride passes 2**31 and the launch switches to 64-bit strides.
    long_context = {VOCABS["Qwen2"]: (8, 16_384)}
    return [
        *_logps_cases(shapes, dtypes),
        *_logps_cases(long_context, dtypes),
        *_preference_cases(dtypes, PIECES),
        *_fused_head_cases(dtypes),
    ]


@dataclass(frozen=True)
class Specialised:
    """A launch as Triton compiles it for one target."""

    fn: Any
    arch: int
    signature: dict
    constexprs: dict
    attrs: dict
    options: Any

    def key(self) -> str:
        import triton
        from triton.backends.nvidia.compiler import get_ptxas_version

        parts = [
            self.fn.cache_key,
            sorted(self.signature.items()),
            sorted((str(k), repr(v)) for k, v in self.constexprs.items()),
            sorted((str(k), repr(v)) for k, v in self.attrs.items()),
            sorted((k, repr(v)) for k, v in self.options.__dict__.items()),
            self.arch,
            triton.__version__,
            get_ptxas_version(self.arch),
        ]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]

    def describe(self) -> str:
        consts = ", ".join(f"{self.fn.arg_names[k[0]]}={v}" for k, v in self.constexprs.items())
        return f"{self.fn.__name__}[{consts}, num_warps={self.options.num_warps}]"


def specialise(call: Captured, arch: int) -> Specialised:
    """What ``call`` compiles to on compute capability ``arch``: Triton's binder and option parsing, as at launch."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(call.fn.signature, call.fn.params, backend)
    bound, specialization, options = binder(*call.args, **call.kwargs)
    options, signature, constexprs, attrs = call.fn._pack_args(backend, call.kwargs, bound, specialization, options)
    return Specialised(call.fn, arch, signature, constexprs, attrs, options)


def _cuobjdump(cubin: bytes, name: str) -> dict[str, int]:
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run(
            [knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    match = re.search(rf"Function {re.escape(name)}:\s*\n\s*(.*)", out)
    if match is None:
        raise RuntimeError(f"cuobjdump: no resource usage for kernel {name!r} in:\n{out}")
    return {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", match.group(1))}


def compile_triton(spec: Specialised, cache: Path | None) -> Resources:
    """Compile ``spec`` to a cubin (or take the cached result) and read its resource usage."""
    key = spec.key()
    hit = _cache_get(cache, key)
    if hit is not None:
        return hit
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    compiled = triton.compile(
        ASTSource(spec.fn, spec.signature, spec.constexprs, spec.attrs),
        target=GPUTarget("cuda", spec.arch, 32),
        options=spec.options.__dict__,
    )
    usage = _cuobjdump(compiled.asm["cubin"], compiled.metadata.name)
    res = Resources(
        registers=usage["REG"],
        stack=usage["STACK"],
        local=usage["LOCAL"],
        shared=compiled.metadata.shared,
        static_shared=usage["SHARED"],
        compile_s=time.perf_counter() - start,
    )
    _cache_put(cache, key, res)
    return res


@dataclass
class TritonRow:
    case: TritonCase
    arch: int
    launch: str
    resources: Resources


# The work of a pool of forked compile processes: kernels do not pickle, forked children inherit this list.
_WORK: list[tuple[Specialised, Path | None]] = []


def _compile_one(index: int) -> Resources:
    return compile_triton(*_WORK[index])


def triton_resources(
    cases: list[TritonCase], archs: tuple[int, ...] = ARCHS, cache: Path | None = None, jobs: int = 1
) -> list[TritonRow]:
    """Resources of every case on every arch; launches that compile to the same binary are compiled once."""
    todo: dict[str, Specialised] = {}
    planned = []
    for case in cases:
        for call in capture(case):
            for arch in archs:
                spec = specialise(call, arch)
                key = spec.key()
                todo.setdefault(key, spec)
                planned.append((case, arch, spec.describe(), key))
    keys = list(todo)
    _WORK[:] = [(todo[k], cache) for k in keys]
    pending = [i for i, k in enumerate(keys) if _cache_get(cache, k) is None]
    results: dict[str, Resources] = {}
    if jobs > 1 and len(pending) > 1:
        # Compiling is single-threaded Python + MLIR + ptxas: processes are what scales.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            results.update(zip((keys[i] for i in pending), pool.map(_compile_one, pending)))
    for i, k in enumerate(keys):
        if k not in results:
            results[k] = _compile_one(i)
    return [TritonRow(case, arch, launch, results[key]) for case, arch, launch, key in planned]


def triton_toolchain_missing() -> str | None:
    """Why Triton kernels cannot be compiled here, or None when they can."""
    try:
        import triton  # noqa: F401
        from triton import knobs
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError as err:
        return f"triton with its NVIDIA backend is not installed ({err})"
    try:
        knobs.nvidia.cuobjdump.path  # noqa: B018
    except (AttributeError, RuntimeError, FileNotFoundError) as err:
        return f"triton's cuobjdump is not available ({err})"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# CUDA follower (nvcc)


def nvcc_path() -> str | None:
    """nvcc from $CUDACXX, PATH or /usr/local/cuda, as CMake's CUDA detection would find it."""
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _cmake_value(text: str, pattern: str, what: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"CMakeLists.txt: cannot find {what} (pattern {pattern!r}); update {__file__} with it")
    return match.group(1)


def cmake_cuda_flags(root: Path = ROOT) -> tuple[list[int], list[str]]:
    """(default CUDA architectures, nvcc flags) of the ``_C`` target's CUDA sources, read from CMakeLists.txt and
    pyproject.toml: CMake's Release flags, the C++ standard, the target's CUDA options and definitions."""
    text = (root / "CMakeLists.txt").read_text()
    archs = _cmake_value(text, r'set\(CMAKE_CUDA_ARCHITECTURES "([0-9;]+)"\)', "the default CMAKE_CUDA_ARCHITECTURES")
    standard = _cmake_value(text, r"set\(CMAKE_CUDA_STANDARD (\d+)\)", "CMAKE_CUDA_STANDARD")
    options = _cmake_value(text, r"\$<\$<COMPILE_LANGUAGE:CUDA>:([^>]*)>", "the CUDA compile options of _C")
    defines = _cmake_value(
        text, r"target_compile_definitions\(_C PRIVATE (SGPO_WITH_CUDA[^)]*)\)", "the CUDA compile definitions"
    )
    build_type = _cmake_value((root / "pyproject.toml").read_text(), r'cmake\.build-type = "(\w+)"', "cmake.build-type")
    if build_type != "Release":
        raise ValueError(f"pyproject.toml: cmake.build-type is {build_type!r}; this check knows Release's flags only")
    flags = ["-O3", "-DNDEBUG", f"-std=c++{standard}", *options.split()]
    defines = defines.replace("${SGPO_CUDA_ARCHS_STR}", archs.replace(";", ","))
    if "${" in defines:
        raise ValueError(f"CMakeLists.txt: the CUDA definitions {defines!r} use a variable this check does not know")
    # The quotes stay: they make a value a string literal, and nvcc would split an unquoted value at its commas.
    flags += [f"-D{d}" for d in defines.split()]
    flags += ["-Xcompiler=-fPIC", "-Xcompiler=-fvisibility=hidden", f"-I{root / 'csrc'}"]
    return [int(a) for a in archs.split(";")], flags


def cuda_sources(root: Path = ROOT) -> list[Path]:
    """The CUDA translation units CMake compiles (``file(GLOB csrc/*.cu)``)."""
    return sorted((root / "csrc").glob("*.cu"))


def _demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if tool is None:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def parse_ptxas(log: str) -> dict[tuple[str, int], Resources]:
    """Per (kernel, arch) resources from ``nvcc --resource-usage`` output."""
    blocks = re.split(r"ptxas info\s*: Compiling entry function ", log)[1:]
    mangled, found = [], []
    for block in blocks:
        head = re.match(r"'(\S+)' for 'sm_(\d+)'", block)
        props = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", block)
        used = re.search(r"Used (\d+) registers(.*)", block)
        if head is None or props is None or used is None:
            raise ValueError(f"nvcc --resource-usage: cannot parse the block:\n{block}")
        extra = used.group(2)
        smem = re.search(r"(\d+) bytes smem", extra)
        lmem = re.search(r"(\d+) bytes lmem", extra)
        mangled.append(head.group(1))
        found.append(
            (
                int(head.group(2)),
                Resources(
                    registers=int(used.group(1)),
                    stack=int(props.group(1)),
                    local=int(lmem.group(1)) if lmem else 0,
                    shared=0,
                    static_shared=int(smem.group(1)) if smem else 0,
                    spill_stores=int(props.group(2)),
                    spill_loads=int(props.group(3)),
                ),
            )
        )
    return {(name, arch): res for name, (arch, res) in zip(_demangle(mangled), found)}


def follower_resources(
    root: Path = ROOT, archs: list[int] | None = None, cache: Path | None = None
) -> dict[tuple[str, int], Resources]:
    """Compile the CUDA sources as CMake does (with ``--resource-usage``) and return each kernel's resources."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise FileNotFoundError("nvcc: not found in $CUDACXX, on PATH or in /usr/local/cuda/bin")
    default_archs, flags = cmake_cuda_flags(root)
    archs = archs or default_archs
    gencode = [f"--generate-code=arch=compute_{a},code=[compute_{a},sm_{a}]" for a in archs]
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    sources = cuda_sources(root)
    digest = hashlib.sha256()
    for path in [*sources, *sorted((root / "csrc").glob("*.h"))]:
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(repr((flags, gencode, version)).encode())
    key = "nvcc-" + digest.hexdigest()[:32]
    if cache is not None and (cache / f"{key}.json").is_file():
        rows = json.loads((cache / f"{key}.json").read_text())
        return {(r["kernel"], r["arch"]): Resources(**r["resources"], cached=True) for r in rows}
    found: dict[tuple[str, int], Resources] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            start = time.perf_counter()
            cmd = [nvcc, "-c", str(source), "-o", str(Path(tmp) / f"{source.stem}.o"), *flags, *gencode]
            proc = subprocess.run([*cmd, "--resource-usage"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"nvcc failed on {source.name}:\n{' '.join(cmd)}\n{proc.stderr}{proc.stdout}")
            parsed = parse_ptxas(proc.stdout + proc.stderr)
            for res in parsed.values():
                res.compile_s = (time.perf_counter() - start) / max(len(parsed), 1)
            found.update(parsed)
    if cache is not None:
        rows = []
        for (kernel, arch), res in found.items():
            data = asdict(res)
            data.pop("cached")
            rows.append({"kernel": kernel, "arch": arch, "resources": data})
        cache.mkdir(parents=True, exist_ok=True)
        (cache / f"{key}.json").write_text(json.dumps(rows))
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Report


def _bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def _merged(values: list[str]) -> str:
    return " / ".join(dict.fromkeys(values))


def markdown(rows: list[TritonRow], follower: dict[tuple[str, int], Resources] | None) -> str:
    """One row per kernel, branch and launch; the dtypes and vocabularies that compile to the same resources share it.

    Each arch column reads registers / local memory per thread (spills) / shared memory per block.
    """
    archs = sorted({row.arch for row in rows})
    groups: dict[tuple, list[TritonRow]] = {}
    by_case: dict[tuple, dict[int, Resources]] = {}
    for row in rows:
        by_case.setdefault((row.case, row.launch), {})[row.arch] = row.resources
    for (case, launch), per_arch in by_case.items():
        usage = tuple(
            (r.registers, r.stack + r.local, r.shared + r.static_shared) for r in (per_arch[a] for a in archs)
        )
        groups.setdefault((case.kernel, case.branch, launch, usage), []).append(
            TritonRow(case, 0, launch, per_arch[archs[0]])
        )
    lines = [
        "| kernel | branch | input dtypes | vocabularies | launch | "
        + " | ".join(f"sm_{a}: regs / spill / shared" for a in archs)
        + " |",
        "|---|---|---|---|---|" + "---:|" * len(archs),
    ]
    for (kernel, branch, launch, usage), members in groups.items():
        dtypes = _merged([m.case.dtype for m in members])
        vocabs = _merged([f"{m.case.vocab:,}" for m in members if m.case.vocab]) or "-"
        cells = " | ".join(f"{regs} / {spill} B / {_bytes(shared)}" for regs, spill, shared in usage)
        lines.append(f"| {kernel} | {branch} | {dtypes} | {vocabs} | `{launch}` | {cells} |")
    if follower:
        lines += [
            "",
            "| CUDA follower kernel | arch | registers | stack frame | spill stores / loads | shared |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for (kernel, arch), r in sorted(follower.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            short = re.search(r"(\w+(?:<\w+>)?)\(", kernel)
            name = short.group(1) if short else kernel
            lines.append(
                f"| `{name}` | sm_{arch} | {r.registers} | {r.stack} B | {r.spill_stores} / {r.spill_loads} B "
                f"| {_bytes(r.static_shared)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the markdown table here (default: stdout)")
    parser.add_argument("--archs", type=int, nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--subset", action="store_true", help="bfloat16 inputs only (every kernel and branch)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--no-cache", action="store_true", help="compile everything again")
    args = parser.parse_args(argv)
    cache = None if args.no_cache else cache_root()

    start = time.perf_counter()
    rows = triton_resources(triton_cases(full=not args.subset), tuple(args.archs), cache, args.jobs)
    triton_s = time.perf_counter() - start
    unique = {id(r.resources): r.resources for r in rows}.values()
    print(
        f"triton: {len(rows)} launches, {len(unique)} distinct binaries, {sum(not r.cached for r in unique)} compiled "
        f"in {triton_s:.1f} s wall ({sum(r.compile_s for r in unique if not r.cached):.1f} s of compiling)",
        file=sys.stderr,
    )
    follower = None
    if nvcc_path() is not None:
        start = time.perf_counter()
        follower = follower_resources(archs=args.archs, cache=cache)
        print(f"nvcc: {len(follower)} kernels in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    table = markdown(rows, follower)
    bad = [f"{row.case.id} sm_{row.arch}: {v}" for row in rows for v in violations(row.resources, row.arch)] + [
        f"{k} sm_{a}: {v}" for (k, a), r in (follower or {}).items() for v in violations(r, a)
    ]
    if args.out:
        args.out.write_text(table)
    else:
        print(table)
    for line in bad:
        print(f"VIOLATION {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
