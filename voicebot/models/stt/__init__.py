"""STT engines: faster-whisper (embedded), OpenAI-compatible /v1/audio/transcriptions."""
