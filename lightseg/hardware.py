"""What this CPU offers: its model name and the instruction-set features that change which kernels run.

The same int8 model is computed differently on different CPUs (ONNX Runtime's MLAS picks its kernels from
``cpuid``), and speed figures mean little without the CPU beside them, so ``bench``, ``eval`` and the int8
export record :func:`cpu_info`. Read from ``/proc/cpuinfo`` on Linux (x86 ``flags``, ARM ``Features``);
elsewhere from numpy's runtime dispatch table, which has no AVX-VNNI or AMX entry. Decisions take a
:class:`CpuInfo` argument, so tests give them one built by hand (:func:`cpu_from_flags`) and every CPU kind
is exercised on any machine.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, field

# The features reported, in this order: the SIMD width, whether an int8 dot product accumulates in int32
# (VNNI, AVX-VNNI, AMX on x86; the dot-product extension on ARM, which Linux calls asimddp), and whether the CPU
# computes in bfloat16 or float16 (OpenVINO's default precision follows them: avx512_bf16, amx_bf16).
ISA_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "asimddp",
                "avx512_bf16", "amx_bf16", "avx512_fp16")
# numpy's names for them (numpy._core._multiarray_umath.__cpu_features__).
_NUMPY_NAMES = {"AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                "AVX512VNNI": "avx512_vnni", "ASIMDDP": "asimddp", "AVX512_SPR": "avx512_fp16"}
# Other spellings of the same feature (macOS and some kernels say dotprod).
_ALIASES = {"dotprod": "asimddp", "avxvnni": "avx_vnni", "avx512vnni": "avx512_vnni"}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    arch: str  # platform.machine(), lower case: "x86_64", "aarch64", "arm64", ...
    flags: frozenset = field(default_factory=frozenset)
    source: str = "given"  # where the flags came from: "/proc/cpuinfo", "numpy", "given"

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i386", "i686", "x86")

    @property
    def is_arm(self) -> bool:
        return self.arch in ("aarch64", "arm64") or self.arch.startswith("arm")

    @property
    def features(self) -> list:
        """The :data:`ISA_FEATURES` this CPU has, in that order."""
        return [f for f in ISA_FEATURES if f in self.flags]

    def describe(self) -> str:
        return f"{self.model} [{self.arch}: {' '.join(self.features) or 'none of ' + '/'.join(ISA_FEATURES)}]"

    def as_dict(self) -> dict:
        return {"cpu": self.model, "arch": self.arch, "isa": self.features}


def _normalise(flags) -> frozenset:
    return frozenset(_ALIASES.get(f.lower(), f.lower()) for f in flags)


def cpu_from_flags(flags, arch="x86_64", model="given CPU") -> CpuInfo:
    """A :class:`CpuInfo` built by hand, e.g. ``cpu_from_flags("avx2 fma")`` for a Zen 3."""
    if isinstance(flags, str):
        flags = flags.split()
    return CpuInfo(model=model, arch=arch, flags=_normalise(flags), source="given")


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (the first processor's entry)."""
    model, flags = "", None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and flags is None:
            flags = value.split()
    return CpuInfo(model=model or platform.processor() or arch, arch=arch, flags=_normalise(flags or ()),
                   source="/proc/cpuinfo")


def _from_numpy(arch: str) -> CpuInfo:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as table
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as table
    flags = [ours for theirs, ours in _NUMPY_NAMES.items() if table.get(theirs)]
    return CpuInfo(model=platform.processor() or arch, arch=arch, flags=_normalise(flags), source="numpy")


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (cached: it does not change while the process runs)."""
    arch = platform.machine().lower()
    try:
        with open("/proc/cpuinfo") as f:
            info = parse_cpuinfo(f.read(), arch)
        if info.flags:
            return info
    except OSError:
        pass
    return _from_numpy(arch)


def cpu_has_bf16(cpu: CpuInfo | None = None) -> bool:
    """Whether the CPU has bfloat16 arithmetic: AVX512_BF16 or AMX-BF16 (x86), BF16 (ARM, Linux: ``bf16``)."""
    cpu = cpu or cpu_info()
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & cpu.flags)
