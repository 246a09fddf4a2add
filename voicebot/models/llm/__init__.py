"""LLM engines: scripted (YAML intents), in-process llama.cpp, OpenAI-compatible chat."""
