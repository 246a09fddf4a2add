"""Voice activity detection: Silero VAD v6 on onnxruntime plus a streaming speech segmenter.

`SileroVad` is the one shared ONNX session (batched across calls; a whole signal known in
advance goes through `SileroVad.probabilities`, the same numbers from a split graph),
`VadStream` a call's model state, `SpeechSegmenter` turns probabilities into speech_start /
speech_end events, and `VoiceActivityDetector` ties one stream and one segmenter together
for a call.
"""

from voicebot.models.vad.detector import VoiceActivityDetector, detect_speech_segments
from voicebot.models.vad.segmenter import (
    SpeechEnd,
    SpeechSegment,
    SpeechSegmenter,
    SpeechStart,
    VadParams,
    VadProbability,
)
from voicebot.models.vad.silero import (
    MODEL_SHA256,
    ModelIntegrityError,
    SileroVad,
    VadStream,
    packaged_model_path,
)

__all__ = [
    "MODEL_SHA256",
    "ModelIntegrityError",
    "SileroVad",
    "SpeechEnd",
    "SpeechSegment",
    "SpeechSegmenter",
    "SpeechStart",
    "VadParams",
    "VadProbability",
    "VadStream",
    "VoiceActivityDetector",
    "detect_speech_segments",
    "packaged_model_path",
]
