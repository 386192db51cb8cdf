"""Every GPU kernel compiled for sm_80 and sm_90 without a GPU: no compile error, no register spill, no local memory,
shared memory within the block limit.

The Triton launches are the real host functions run on meta tensors (benchmarks/kernel_resources.py intercepts the
launch and compiles it ahead of time); the CUDA follower is compiled by nvcc with CMakeLists.txt's flags. Results are
cached under $SGPO_CACHE/kernel_resources, so only a change to a kernel, its launch or the compilers recompiles.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "kernel_resources.py"


def _load() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("sgpo_kernel_resources", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up while the file executes
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


kr = _load()
TRITON_MISSING = kr.triton_toolchain_missing()
needs_triton = pytest.mark.skipif(TRITON_MISSING is not None, reason=TRITON_MISSING or "")
needs_nvcc = pytest.mark.skipif(kr.nvcc_path() is None, reason="nvcc not found ($CUDACXX, PATH, /usr/local/cuda)")
KERNELS = ("token_logps_fwd", "token_logps_bwd", "preference", "fused_fold", "fused_grad")


@pytest.fixture(scope="module")
def triton_rows() -> list:
    return kr.triton_resources(kr.triton_cases(full=True), kr.ARCHS, kr.cache_root(), jobs=2)


@needs_triton
@pytest.mark.parametrize("arch", kr.ARCHS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_triton_kernel_fits_the_target(triton_rows: list, kernel: str, arch: int) -> None:
    rows = [r for r in triton_rows if r.case.kernel == kernel and r.arch == arch]
    assert len(rows) == sum(c.kernel == kernel for c in kr.triton_cases(full=True))
    bad = [f"{r.case.id} ({r.launch}): {v}" for r in rows for v in kr.violations(r.resources, arch)]
    assert not bad, "\n".join(bad)
    assert all(r.resources.registers > 0 for r in rows)


@needs_triton
def test_the_matrix_covers_every_branch_dtype_and_vocabulary() -> None:
    cases = kr.triton_cases(full=True)
    logps_cases = [c for c in cases if c.kernel.startswith("token_logps")]
    assert {c.vocab for c in logps_cases} == set(kr.VOCABS.values())
    assert {c.dtype for c in cases} == set(kr.LOGITS_DTYPES)
    branches = {c.branch for c in cases if c.kernel == "preference"}
    for loss_type in kr.LOSS_TYPES:
        assert any(b.split()[0] == loss_type for b in branches), loss_type
    assert {"ipo lengths", "ipo weights lengths", "ssapo margin K=6 weights", "ssapo probability K=16"} <= branches
    fused = {(c.kernel, c.branch) for c in cases if c.kernel.startswith("fused_")}
    for warps in kr.FUSED_HEAD_WARPS:
        for sum_sq in ("plain", "sum_sq"):
            for check in ("check", "no-check"):
                assert ("fused_fold", f"{sum_sq} {check} warps={warps}") in fused
        for bias in ("bias", "no-bias"):
            assert ("fused_grad", f"{bias} warps={warps}") in fused


@needs_triton
def test_launches_use_the_dispatch_block_sizes_and_the_runtime_specialisation() -> None:
    from sgpo.kernels.fused_logps import fold_block_v, grad_blocks
    from sgpo.kernels.logps import launch_block_v
    from sgpo.kernels.preference import launch_blocks

    for case in kr.triton_cases(full=True):
        (call,) = kr.capture(case)
        spec = kr.specialise(call, 90)
        consts = {spec.fn.arg_names[k[0]]: v for k, v in spec.constexprs.items()}
        if case.kernel.startswith("fused_"):
            warps = int(re.search(r"warps=(\d+)", case.branch).group(1))
            assert spec.options.num_warps == warps, case.id
            if case.kernel == "fused_fold":
                assert consts["BLOCK_V"] == fold_block_v(8192), case.id
                assert (consts["WITH_SUM_SQ"], consts["CHECK_LABELS"]) == (
                    "sum_sq" in case.branch,
                    "no-check" not in case.branch,
                ), case.id
            else:
                assert (consts["BLOCK_M"], consts["BLOCK_N"]) == grad_blocks(warps), case.id
                assert consts["HAS_BIAS"] == ("no-bias" not in case.branch), case.id
            pointer = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16"}[case.dtype]
            assert spec.signature["tile_ptr"] == pointer, case.id
        elif case.vocab is not None:
            assert consts["BLOCK_V"] == launch_block_v(case.vocab), case.id
            pointer = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16"}[case.dtype]
            assert spec.signature["logits_ptr"] == pointer, case.id
            # a batch stride of 16,384 x 151,936 elements no longer fits 32 bits
            long_context = "T=16384" in case.branch
            assert spec.signature["stride_b"] == ("i64" if long_context else "i32"), case.id
        else:
            k = int(m.group(1)) if (m := re.search(r"K=(\d+)", case.branch)) else 1
            assert (consts["BLOCK"], consts["BLOCK_K"]) == launch_blocks(k), case.id
            # the op hands the kernel float32 whatever the inputs' dtype
            assert spec.signature["chosen_ptr"] == "*fp32", case.id


def test_violations_flag_spills_local_memory_and_shared_memory_over_the_limit() -> None:
    clean = kr.Resources(registers=40, stack=0, local=0, shared=kr.SHARED_LIMITS[80], static_shared=0)
    assert kr.violations(clean, 80) == []
    over = kr.Resources(registers=40, stack=0, local=0, shared=kr.SHARED_LIMITS[80], static_shared=1)
    assert "shared memory" in kr.violations(over, 80)[0] and kr.violations(over, 90) == []
    assert "local memory" in kr.violations(kr.Resources(255, 16, 0, 0, 0), 90)[0]
    assert "spills" in kr.violations(kr.Resources(255, 8, 0, 0, 0, spill_stores=8, spill_loads=8), 90)[0]


@needs_triton
def test_a_kernel_that_spills_is_caught() -> None:
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def hold_a_wide_row(x_ptr, out_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs)
        y = tl.load(x_ptr + BLOCK + offs)
        # x and y stay live across both reductions: 2 x 512 floats per thread at one warp
        tl.store(out_ptr + offs, x * tl.sum(y, axis=0) + y * tl.sum(x * y, axis=0))

    x = torch.empty(2 * 16384, device="meta")
    call = kr.Captured(hold_a_wide_row, (x, x), {"BLOCK": 16384, "num_warps": 1})
    res = kr.compile_triton(kr.specialise(call, 90), cache=None)
    assert res.stack > 1024
    assert any("local memory" in v for v in kr.violations(res, 90)), res


@needs_nvcc
def test_cuda_flags_are_cmakes() -> None:
    archs, flags = kr.cmake_cuda_flags()
    assert archs == [80, 90]
    assert "--expt-relaxed-constexpr" in flags and "-std=c++17" in flags
    assert [p.name for p in kr.cuda_sources()] == ["cuda_runtime.cu", "follower_cuda.cu"]
    # Where the extension has been built, its ninja file shows the flags CMake really passed.
    ninja = sorted(ROOT.glob("build/*/build.ninja"))
    if not ninja:
        pytest.skip("no CMake build tree under build/ to compare with")
    text = ninja[-1].read_text()
    match = re.search(
        r"follower_cuda\.cu\.o: CUDA_COMPILER\S*.*?\n  DEFINES = (.*?)\n.*?\n  FLAGS = (.*?)\n", text, re.S
    )
    assert match, f"{ninja[-1]}: no compile rule for follower_cuda.cu"
    # CMake 4 quotes the --generate-code arguments in build.ninja; 3.x does not.
    built = [f.strip('"') for f in match.group(2).split()]
    built = [f for f in built if not f.startswith("--generate-code")]
    assert sorted(built) == sorted(f for f in flags if not f.startswith(("-D", "-I")) or f == "-DNDEBUG")
    gencode = re.findall(r"arch=compute_(\d+)", match.group(2))
    assert [int(a) for a in gencode] == archs
    built_defines = set(match.group(1).replace('\\"', '"').split())
    assert {f for f in flags if f.startswith("-D") and f != "-DNDEBUG"} <= built_defines


@pytest.fixture(scope="module")
def follower() -> dict:
    return kr.follower_resources(cache=kr.cache_root())


@needs_nvcc
@pytest.mark.parametrize("arch", kr.ARCHS)
def test_follower_kernels_do_not_spill(follower: dict, arch: int) -> None:
    names = {re.search(r"(\w+(?:<\w+>)?)\(", k).group(1): r for (k, a), r in follower.items() if a == arch}
    expected = {f"{k}<{t}>" for k in ("setup_kernel", "hist_kernel", "output_kernel") for t in ("float", "double")}
    assert expected | {"choose_kernel", "finish_kernel"} == set(names)
    bad = [f"{name}: {v}" for name, r in names.items() for v in kr.violations(r, arch)]
    assert not bad, "\n".join(bad)


def test_ptxas_report_parsing_reads_spills_and_local_memory() -> None:
    log = (
        "ptxas info    : Compiling entry function '_Z6kernelPd' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z6kernelPd\n"
        "    24 bytes stack frame, 20 bytes spill stores, 16 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 2048 bytes smem, 32 bytes lmem, 380 bytes cmem[0]\n"
    )
    ((name, arch), res), *_ = kr.parse_ptxas(log).items()
    assert arch == 90 and "kernel" in name
    assert (res.registers, res.stack, res.spill_stores, res.spill_loads, res.local, res.static_shared) == (
        255,
        24,
        20,
        16,
        32,
        2048,
    )
    assert len(kr.violations(res, 90)) == 2
