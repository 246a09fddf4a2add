"""The WebRTC leg (aiortc): `POST /webrtc/offer` signalling, the browser's Opus track in, our
paced bot track out, call events on the `events` data channel."""
