"""The per-call agent: VAD events drive the state machine, speech goes to STT, LLM text to
TTS, and the bot's frames go back to whichever transport the call came in on. Knows
nothing of transports; see `session.CallSession`."""
