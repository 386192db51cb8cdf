"""Where and in what precision a model answers prompts: a GPU in bfloat16 when there is one, else the CPU in float32.

bfloat16 on a CPU runs slower than float32 there (no matmul units for it on most CPUs), so ``auto`` keeps float32 on the
CPU; explicit values are taken as given once checked.
"""

from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(dtype: str, device: str, option: str = "--dtype") -> str:
    """``auto``: bfloat16 on a CUDA device that supports it, float16 on one that does not, float32 on the CPU."""
    import torch

    if dtype == "auto":
        if not device.startswith("cuda"):
            return "float32"
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if dtype not in DTYPES:
        raise ValueError(f"{option}: unknown dtype {dtype!r}; expected auto or one of {', '.join(DTYPES)}")
    return dtype


def resolve_device(device: str, option: str = "--device") -> str:
    """``auto``: ``cuda`` when a CUDA device is present, else ``cpu``; ``cuda``/``cuda:N`` must name a present one."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device[5:]) if ":" in device else 0
        if index >= count:
            raise ValueError(
                f"{option}: {device!r} asks for CUDA device {index} and this machine has {count}; "
                "expected auto or cpu here"
            )
        return device
    raise ValueError(f"{option}: unknown device {device!r}; expected auto, cpu, cuda or cuda:N")


def resolve_placement(device: str, dtype: str) -> tuple[str, str]:
    """The device and dtype ``auto`` stands for here, each checked (errors name ``--device`` / ``--dtype``)."""
    device = resolve_device(device)
    return device, resolve_dtype(dtype, device)
