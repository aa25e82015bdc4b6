"""What this machine runs fast: precision and memory layout, chosen once from the hardware.

bfloat16 autocast halves the bytes of every activation and doubles the arithmetic rate where
the hardware has bfloat16 instructions, and is emulated (slower than float32) where it has not.
Measured with cnnlab's resnet20 step, batch 128, on 2-core machines (issues 7 and 8):

    CPU                     capability  native bf16  float32 channels_last   bf16 autocast
    AMD EPYC Zen 5          AVX512      yes          ~640 images/s           ~1,430 images/s
    AMD EPYC Zen 3          AVX2        no            460 images/s             30 images/s
    Intel Xeon, KVM (a)     AVX512      no            750 images/s            240 images/s

    (a) Emerald Rapids with AVX512-BF16 and AMX hidden by the hypervisor; oneDNN says bf16.

So "auto" means bfloat16 where the device runs it natively (CUDA GPUs of compute capability
8.0 and later; x86 CPUs with AVX512-BF16 or AMX-BF16 instructions, other CPUs where oneDNN
reports bf16 support) and float32 elsewhere: oneDNN's own answer is yes on any AVX512 CPU,
where bfloat16 is emulated (see cpu_runs_bf16). channels_last (NHWC) is chosen on the CPU
(oneDNN's convolutions are NHWC: 460 against 377 images/s on the Zen 3, x1.4 on the Zen 5)
and on GPUs with tensor cores (7.0 and later), whose convolution kernels are NHWC.

`native_bf16` and `cpu_capability` are the only places that ask the hardware; tests replace
them to check both answers on any machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "Arithmetic",
    "EmulatedPrecisionWarning",
    "autocast",
    "check_device",
    "choose_arithmetic",
    "cpu_capability",
    "cpu_runs_bf16",
    "describe_machine",
    "machine_info",
    "native_bf16",
    "threads_per_run",
]

PRECISION_CHOICES = ("auto", "fp32", "bf16")


class EmulatedPrecisionWarning(UserWarning):
    """bfloat16 was asked for on a device that only emulates it."""


@dataclass(frozen=True)
class Arithmetic:
    """The precision and memory layout a run uses, and why (recorded in config.json)."""

    precision: str  # "fp32" | "bf16" (autocast; weights and optimizer stay float32)
    channels_last: bool
    reason: str  # one line, printed when training starts

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def cpu_capability() -> str:
    """The widest vector instructions torch uses here: "AVX512", "AVX2", "DEFAULT", ..."""
    return str(torch.backends.cpu.get_cpu_capability())


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 arithmetic natively (not emulated in float32)."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8  # Ampere and later have bfloat16 tensor cores
    if device.type == "cpu":
        return cpu_runs_bf16(
            bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), torch.cpu.get_capabilities()
        )
    return False


# x86 instructions that compute in bfloat16: AVX512-BF16 (dot products of bfloat16 pairs) and
# AMX-BF16 (matrix tiles).
X86_BF16_INSTRUCTIONS = ("avx512_bf16", "amx_bf16")


def cpu_runs_bf16(onednn_bf16: bool, features: Mapping[str, object]) -> bool:
    """Whether a CPU computes in bfloat16 natively, from oneDNN's answer and its features.

    oneDNN says yes to bfloat16 on x86 wherever AVX512 (BW, VL, DQ) is present, with or
    without bfloat16 instructions; without them it converts to float32 and back. An Intel Xeon
    (Emerald Rapids) under KVM that hid AVX512-BF16 and AMX took 6.4x the float32 time for a
    3x3 convolution under bfloat16 autocast (issue 8, 2026-12-06). On x86 the instructions
    decide; elsewhere (ARM: SVE, BF16) oneDNN's answer stands.

    Args:
        onednn_bf16: `torch.ops.mkldnn._is_mkldnn_bf16_supported()`.
        features: `torch.cpu.get_capabilities()` ("architecture", "avx512_bf16", ...).
    """
    if not onednn_bf16:
        return False
    if features.get("architecture") in ("x86_64", "x86"):
        return any(bool(features.get(name)) for name in X86_BF16_INSTRUCTIONS)
    return True


def check_device(device: torch.device) -> None:
    """Refuse devices cnnlab cannot train on, in one line.

    Raises:
        ValueError: not a CPU or CUDA device, or a CUDA index this machine does not have.
    """
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"cnnlab trains on the CPU or a CUDA GPU, not on {device.type!r}; use --device cpu "
            "or --device cuda"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {device} names GPU {device.index}, but this machine has "
            f"{torch.cuda.device_count()} (cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
        )


def choose_arithmetic(
    device: torch.device, precision: str = "auto", channels_last: bool | None = None
) -> Arithmetic:
    """The precision and layout of a run on `device`.

    Args:
        device: where the run trains.
        precision: "auto" (bfloat16 where native, else float32), "fp32" or "bf16". An explicit
            "bf16" on a device that only emulates it still runs, with an
            EmulatedPrecisionWarning that says how much slower it measured there.
        channels_last: None chooses by device (see the module docstring).

    Raises:
        ValueError: an unknown precision, or a device cnnlab cannot train on.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}"
        )
    check_device(device)
    native = native_bf16(device)
    where = describe_device(device)
    if precision == "auto":
        chosen = "bf16" if native else "fp32"
        why = "runs bfloat16 natively" if native else "has no native bfloat16"
        reason = f"precision auto -> {chosen}: {where} {why}"
    else:
        chosen = precision
        reason = f"precision {chosen} (asked for) on {where}"
        if chosen == "bf16" and not native:
            warnings.warn(_emulated_message(device, where), EmulatedPrecisionWarning, stacklevel=2)
            reason += ", emulated"
    if channels_last is None:
        channels_last = _channels_last_is_faster(device)
        reason += f"; layout {'channels_last' if channels_last else 'NCHW'} (faster here)"
    else:
        reason += f"; layout {'channels_last' if channels_last else 'NCHW'} (asked for)"
    return Arithmetic(chosen, channels_last, reason)


def autocast(
    device: torch.device, precision: str, cache_casts: bool = True
) -> contextlib.AbstractContextManager[object]:
    """bfloat16 autocast for precision "bf16", nothing for "fp32".

    `cache_casts=False` inside a CUDA graph capture: the cache would keep casts made then.
    """
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache_casts)
    return contextlib.nullcontext()


def _channels_last_is_faster(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 7  # tensor cores
    return True


def _emulated_message(device: torch.device, where: str) -> str:
    ratio = measure_bf16_slowdown(device)
    return (
        f"--precision bf16 is emulated on {where}: a 3x3 convolution took {ratio:.1f}x its "
        "float32 time here; --precision auto (float32 here) is faster"
    )


def measure_bf16_slowdown(device: torch.device, repeats: int = 3) -> float:
    """Time of a 3x3 convolution under bfloat16 autocast over its float32 time (~0.2 s)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 32, 32, 32, generator=g).to(device, memory_format=torch.channels_last)
    w = torch.randn(32, 32, 3, 3, generator=g).to(device, memory_format=torch.channels_last)

    def best_time(dtype: torch.dtype | None) -> float:
        context = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        times = []
        with torch.no_grad(), context:
            for _ in range(repeats + 1):
                start = time.perf_counter()
                y = F.conv2d(x, w, padding=1)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                y.sum().item()
                times.append(time.perf_counter() - start)
        return min(times[1:])

    return best_time(torch.bfloat16) / max(best_time(None), 1e-9)


def threads_per_run(runs_at_once: int, cores: int | None = None) -> int | None:
    """CPU threads for each of `runs_at_once` training processes sharing the machine's cores;
    None where there is nothing to share out (one run) or OMP_NUM_THREADS says (the user's).

    Left to torch's default, every process takes every core, and two of them then slow each
    other about 10x (each one's threads wait for cores the other holds). Shared out, two
    one-thread resnet20 runs on a 2-core Zen 4 trained about 1,000 images/s together against
    860 for one two-thread run (bf16, batch 256; issue 8's sweeps): small networks use a second
    core poorly, so runs side by side are the better use of it."""
    if runs_at_once <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = cores if cores is not None else os.cpu_count() or 1
    return max(1, cores // runs_at_once)


def cpu_name() -> str:
    """The processor's model name ("AMD EPYC 9R14"), where the system tells it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    """ "NVIDIA H100 80GB HBM3 (compute capability 9.0)" or "AMD EPYC (AVX2, 2 threads)"."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    return f"{cpu_name()} ({cpu_capability()}, {torch.get_num_threads()} threads)"


def machine_info(device: torch.device) -> dict[str, object]:
    """What config.json and the benchmark record of the machine a run used."""
    info: dict[str, object] = {
        "device": str(device),
        "device_name": describe_device(device),
        "cpu": cpu_name(),
        "cpu_capability": cpu_capability(),
        "native_bf16": native_bf16(device),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def describe_machine(device: torch.device) -> str:
    """One line for logs and benchmarks: the device and whether bfloat16 is native there."""
    native = "native bf16" if native_bf16(device) else "no native bf16"
    return f"{describe_device(device)}, {native}, torch {torch.__version__}"
