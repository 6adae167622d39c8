"""What a speed benchmark records besides time: the machine, and peak memory of one call."""
from __future__ import annotations

import os
import platform
from importlib import metadata

import torch


def machine_info(device: str | torch.device = "cpu") -> dict:
    """torch and library versions, threads, CPU model and count, accelerator."""
    info = {"torch": torch.__version__, "learn2learn": _version("learn2learn"), "higher": _version("higher"),
            "jax": _version("jax"),
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cpu": _cpu_model(), "machine": platform.machine(),
            "device": str(device)}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_memory_bytes(fn, device: str | torch.device = "cpu") -> int:
    """Peak of the bytes torch allocated during `fn()` beyond what was allocated before it.

    CUDA: the caching allocator's peak statistics. CPU: torch's own allocations replayed
    from a memory-profiling `torch.profiler` trace (tracemalloc does not see them, and the
    process RSS high-water mark is dominated by imports).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Allocation (+) and free (−) records in time order; kineto_results is the raw trace.
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    running = peak = 0
    for record in records:
        running += record.nbytes()
        peak = max(peak, running)
    return peak


def tune_malloc(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """glibc only: keep freed memory in the process instead of handing it back every step.

    By default glibc serves large blocks (MBs: an ensemble's per-task weights) with mmap and
    trims the heap whenever enough is free at its top, so every meta-iteration faults its
    big tensors in again page by page (measured: ~1,200 page faults and ~3.5 ms of kernel
    time per step of a 27-member ensemble; with this, ~40 and 0.4 ms). Process-wide, no
    effect on any number; returns whether it was applied.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers (malloc.h)
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(libc.mallopt(m_trim_threshold, trim_threshold))
