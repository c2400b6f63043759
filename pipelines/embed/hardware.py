"""What this machine's CPU offers the embedding backends, and the backend `#auto` picks from it."""

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


def best_backend(flags: tuple[str, ...] | None = None) -> str:
    """The backend `#auto` builds with: bf16 where the CPU has bfloat16 matrix instructions (AMX-BF16,
    AVX512_BF16), onnx-int8 where it has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI),
    torch fp32 otherwise. RAGPIPE_AUTO_BACKEND overrides (a measured choice for this machine)."""
    from pipelines.settings import load_settings

    chosen = load_settings().auto_backend
    if chosen:
        return chosen
    flags = cpu_model_and_flags()[1] if flags is None else flags
    if {"amx_bf16", "avx512_bf16"} & set(flags):
        return "bf16"
    if {"avx512_vnni", "avx_vnni"} & set(flags):
        return "onnx-int8"
    return "torch"
