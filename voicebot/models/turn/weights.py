"""Where the turn model's weights come from: Smart Turn v3.2 (BSD-2-Clause), the int8 CPU
ONNX file inside Pipecat's PyPI wheel, taken out at set-up by `registry_files` (the wheel
itself, and its dependencies, are never installed). Both the wheel and the file are pinned.
"""

from __future__ import annotations

from voicebot.models.registry_files import ArchiveMember, RegistryArchive, register

PIPECAT_WHEEL = RegistryArchive(
    "pipecat-ai", "pipecat_ai-1.14.0-py3-none-any.whl",
    "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44",
)  # fmt: skip

SMART_TURN_V3 = ArchiveMember(
    "smart-turn-v3.2",
    PIPECAT_WHEEL,
    "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
    "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
)

register(SMART_TURN_V3)
