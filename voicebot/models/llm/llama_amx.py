"""A guard for in-process llama.cpp on CPUs with Intel AMX (Sapphire Rapids and later).

llama.cpp's CPU backend repacks weights into an "extra buffer type" for AMX when the CPU has
it; with llama-cpp-python 0.3.36 (built with -march=native) on such a CPU the first token of
SmolLM2's q4 GGUF dies with SIGSEGV in that path, which would take the whole gateway down on
the first reply. Loading with `use_extra_bufts = False` keeps the plain AVX-512/AVX2 kernels
and runs. Only CPUs that report AMX lose the repack; elsewhere nothing changes.
"""

from __future__ import annotations

import functools
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_has_amx(cpuinfo: Path = CPUINFO) -> bool:
    """True when the kernel reports AMX INT8 tiles (Linux; False where it cannot tell)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return "amx_int8" in line.split(":", 1)[-1].split()
    return False


def avoid_amx_repack() -> bool:
    """On an AMX CPU, make every llama.cpp model load without extra buffer types; returns
    whether it did. Idempotent; call before `llama_cpp.Llama(...)`."""
    if not cpu_has_amx():
        return False
    import llama_cpp.llama_cpp as bindings

    default = bindings.llama_model_default_params
    if getattr(default, "_voicebot_no_extra_bufts", False):
        return True

    @functools.wraps(default)
    def without_extra_bufts():  # type: ignore[no-untyped-def]
        params = default()
        params.use_extra_bufts = False
        return params

    without_extra_bufts._voicebot_no_extra_bufts = True  # type: ignore[attr-defined]
    bindings.llama_model_default_params = without_extra_bufts
    return True
