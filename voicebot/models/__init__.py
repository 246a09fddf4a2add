"""Engines behind small protocols: VAD (Silero ONNX, our own inference), STT, LLM, TTS.

Model weights come only from registry packages, located with importlib.resources and
checked against a pinned sha256 (DESIGN.md section 5).
"""
