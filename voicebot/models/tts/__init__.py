"""TTS engines: Piper (embedded neural voice), espeak-ng (light fallback), OpenAI-compatible."""
