"""voicebot: a self-hostable voice-bot gateway.

Transports (SIP, WebRTC, WebSocket) turn calls into canonical 16 kHz frames
(`voicebot.audio`), the agent (`voicebot.agent`) runs VAD -> STT -> LLM -> TTS on them,
and frames flow back to the same transport.
"""

__version__ = "0.1.0"
