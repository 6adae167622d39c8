"""What machine computed a number: the processor (and GPU) whose arithmetic a record's floats depend on.

Why it is part of a record's fingerprint: the same code, configuration and seed give other floats
on another processor. Measured here (torch 2.14.1, one thread): on an AVX-512 AMD EPYC, 14 of the
16 `ci.toml` cells differed in most of their numbers from the same sweep made on the machine that
made the earlier `results/baseline` (relative differences 1e-7 for first-order methods up to 6e-3
after 400 steps of second-order MAML), while each machine reproduces itself bitwise. Forcing
ATen's own kernels to AVX2 (`ATEN_CPU_CAPABILITY=avx2`) changed no number of a run; MKL's matrix
products, which pick their kernel (and so their summation order) by processor, are the likely
source: `MKL_CBWR=COMPATIBLE` changes them (and the runs) on one machine, while
`MKL_CBWR=AVX2`/`AVX512` did not reproduce the other machine's numbers. So a folder resumed on
another processor would silently mix two machines' numbers in what reads as one configuration's
results; the fingerprint's `hardware` key makes the resume refuse instead
(`benchmarks.fingerprint`). Regression checks and the pooling of seeds allow other hardware (those
differences are within the regression tolerances and far below the seed-to-seed spread); the
report lists the hardware each run was made on.

The processor is named by vendor, family and model numbers (two CPUs that share them run the
same MKL and ATen kernels), its model name, and the ATen vector capability in use; a CUDA run adds
the GPU's name and compute capability.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@functools.cache
def cpu_name() -> str:
    """e.g. 'AuthenticAMD family 25 model 17 (AMD EPYC) [AVX512]'."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    labels = {"vendor_id": "", "cpu family": "family ", "model": "model "}
    head = " ".join(f"{label}{info[key]}" for key, label in labels.items() if key in info)
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{head} ({name}) [{capability}]" if head else f"{name} [{capability}]"


@functools.cache
def _gpu_name(index: int) -> str:
    properties = torch.cuda.get_device_properties(index)
    return f"{properties.name} (sm_{properties.major}{properties.minor})"


def hardware(device: str | torch.device = "cpu") -> str:
    """The machine a run on `device` computes on, as one string stored in its fingerprint."""
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_name()
    try:
        gpu = _gpu_name(device.index if device.index is not None else torch.cuda.current_device())
    except (RuntimeError, AssertionError, AttributeError):  # no usable GPU: the run itself will refuse
        gpu = "no CUDA device"
    return f"{cpu_name()} + {gpu}"
