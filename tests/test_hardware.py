"""CPU feature detection: parsed from /proc/cpuinfo text, so any CPU kind is testable anywhere."""

from lightseg.hardware import ISA_FEATURES, CpuInfo, cpu_from_flags, cpu_info, parse_cpuinfo

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu avx2 avx512f
"""
GRAVITON2 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
"""


def test_parse_x86_cpuinfo_takes_the_first_processor():
    cpu = parse_cpuinfo(ZEN3, "x86_64")
    assert cpu.model == "AMD EPYC 7B13" and cpu.is_x86 and not cpu.is_arm
    assert cpu.features == ["avx2", "fma"]  # the second entry's avx512f is not read
    assert cpu.as_dict() == {"cpu": "AMD EPYC 7B13", "arch": "x86_64", "isa": ["avx2", "fma"]}
    assert "avx2 fma" in cpu.describe()


def test_parse_arm_cpuinfo_features_line():
    cpu = parse_cpuinfo(GRAVITON2, "aarch64")
    assert cpu.is_arm and cpu.features == ["asimddp"] and cpu.model  # no model name line: a fallback, not empty


def test_flags_given_by_hand_are_normalised():
    cpu = cpu_from_flags("AVX2 DotProd avxvnni", arch="arm64")
    assert cpu.flags == {"avx2", "asimddp", "avx_vnni"} and cpu.is_arm
    assert cpu_from_flags([]).features == [] and "none of" in cpu_from_flags([]).describe()


def test_this_machine_is_described():
    cpu = cpu_info()
    assert isinstance(cpu, CpuInfo) and cpu.model and cpu.arch
    assert set(cpu.features) <= set(ISA_FEATURES) and cpu_info() is cpu  # cached


def test_bfloat16_and_float16_arithmetic_are_reported_in_order():
    # a Sapphire Rapids without AMX, as a cloud VM shows it: OpenVINO's default precision depends on avx512_bf16
    cpu = cpu_from_flags("avx512f avx512_fp16 avx2 avx512_bf16 avx512_vnni fma avx512bw")
    assert cpu.features == ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16"]
