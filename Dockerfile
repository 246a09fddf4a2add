# voicebot gateway image: the same set-up as `make run`, on python:3.11-slim.
FROM python:3.11-slim

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VOICEBOT_HOST=0.0.0.0

# The Debian packages the Makefile installs (espeak-ng: light TTS and test audio; sox: audio tools).
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng sox make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY voicebot ./voicebot
RUN pip install .

# HTTP/WebSocket/WebRTC; SIP signalling on UDP.
EXPOSE 8000 5060/udp
CMD ["voicebot", "serve"]
