"""The FastAPI gateway: WebSocket leg, WebRTC signalling and media, the web page, metrics."""
