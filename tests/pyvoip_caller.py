"""An independent SIP client for the interop test: pyVoIP (no code of ours) registers to
the PBX, calls the bot's extension, says something, listens, hangs up. Run as a separate
process (pyVoIP uses threads and blocking sockets); prints one JSON line of results."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from pyVoIP.VoIP import CallState, VoIPPhone

from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import read_wav_canonical


def main() -> None:
    pbx_port, sip_port, wav, listen_s = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        sys.argv[3],
        float(sys.argv[4]),
    )
    phone = VoIPPhone("127.0.0.1", pbx_port, "alice", sys.argv[5], myIP="127.0.0.1",
                      sipPort=sip_port, rtpPortLow=23000, rtpPortHigh=23099)  # fmt: skip
    phone.start()
    result: dict[str, object] = {"answered": False}
    try:
        call = phone.call("bot")
        deadline = time.monotonic() + 15
        while call.state != CallState.ANSWERED and time.monotonic() < deadline:
            time.sleep(0.05)
        result["answered"] = call.state == CallState.ANSWERED
        if call.state == CallState.ANSWERED:
            # pyVoIP speaks unsigned 8-bit linear audio at 8 kHz.
            speech = resample_whole(read_wav_canonical(wav), 16000, 8000)
            call.write_audio(((speech.astype(np.int32) >> 8) + 128).astype(np.uint8).tobytes())
            heard = bytearray()
            end = time.monotonic() + listen_s
            while time.monotonic() < end:
                heard += call.read_audio(160, blocking=False)
                time.sleep(0.02)
            samples = np.frombuffer(bytes(heard), np.uint8).astype(np.int32) - 128
            result["heard_seconds"] = len(samples) / 8000
            result["loud_fraction"] = float(np.mean(np.abs(samples) > 8))
            call.hangup()
            result["hung_up"] = True
    finally:
        phone.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
