"""What this machine offers the embedding backends (CPU flags, a CUDA GPU), the backend `#auto` picks
from it, and the device the torch backends run on."""

import platform
from functools import cache
from pathlib import Path

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
"""The CPU features that decide which embedding backend is fastest."""


@cache
def cpu_model_and_flags() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which of CPU_FLAGS it has (Linux /proc/cpuinfo; none elsewhere)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    present = set(fields.get("flags", "").split())
    return fields.get("model name") or platform.processor() or "unknown", tuple(f for f in CPU_FLAGS if f in present)


def cuda_visible() -> bool:
    """A CUDA GPU that torch can use (False without one, or with a CPU-only torch)."""
    import torch

    return bool(torch.cuda.is_available())


def choose_device(backend: str, setting: str | None = None, cuda: bool | None = None) -> str:
    """The device a backend's model runs on: RAGPIPE_DEVICE (auto, cpu or cuda; auto means a visible
    CUDA GPU, else the CPU). onnx-int8 runs on the CPU; fp16 needs a GPU. Raises with what to do."""
    from pipelines.embed.errors import ModelUnavailable
    from pipelines.settings import load_settings

    setting = setting or load_settings().device
    if backend == "onnx-int8":
        return "cpu"
    cuda = cuda_visible() if cuda is None and setting != "cpu" else bool(cuda)
    if setting == "cuda" and not cuda:
        raise ModelUnavailable("RAGPIPE_DEVICE=cuda but torch sees no CUDA GPU here: install a CUDA build of "
                               "torch on a machine with a GPU, or set RAGPIPE_DEVICE=auto")
    device = "cuda" if cuda and setting != "cpu" else "cpu"
    if backend == "fp16" and device != "cuda":
        raise ModelUnavailable("the fp16 backend runs on a CUDA GPU and none is in use here: use #bf16 or "
                               "#onnx-int8 on a CPU, or #auto")
    return device


def best_backend(flags: tuple[str, ...] | None = None, cuda: bool | None = None) -> str:
    """The backend `#auto` builds with: fp16 on a CUDA GPU (unless RAGPIPE_DEVICE=cpu); else bf16 where
    the CPU has bfloat16 matrix instructions (AMX-BF16, AVX512_BF16), onnx-int8 where it has int8
    dot-product instructions (AVX-512 VNNI, AVX-VNNI), torch fp32 otherwise. RAGPIPE_AUTO_BACKEND
    overrides (a measured choice for this machine)."""
    from pipelines.settings import load_settings

    settings = load_settings()
    if settings.auto_backend:
        return settings.auto_backend
    if settings.device != "cpu" and (cuda_visible() if cuda is None else cuda):
        return "fp16"
    flags = cpu_model_and_flags()[1] if flags is None else flags
    if {"amx_bf16", "avx512_bf16"} & set(flags):
        return "bf16"
    if {"avx512_vnni", "avx_vnni"} & set(flags):
        return "onnx-int8"
    return "torch"
