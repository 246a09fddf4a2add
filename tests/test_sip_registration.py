"""Registration mode against a real registrar: Debian's Kamailio on loopback is the PBX,
the bot REGISTERs with digest auth as extension "bot", and SIPp calls the extension
through Kamailio."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import siptools
from tests.gateway_server import gateway
from tests.kamailio import KAMAILIO, start_kamailio, stop_kamailio
from tests.servers import free_port
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import write_wav
from voicebot.models.tts.piper import PiperTextToSpeech

pytestmark = pytest.mark.skipif(
    not (Path(KAMAILIO).exists() and Path(siptools.SIPP).exists()),
    reason="kamailio / sipp not installed",
)


def test_bot_registers_and_takes_a_call_through_kamailio(tmp_path: Path) -> None:
    pbx_port, sip_port = free_port(), free_port()
    pbx = start_kamailio(tmp_path, pbx_port, "s3cret-pw")
    events = tmp_path / "events.jsonl"
    try:
        time.sleep(1.0)
        assert pbx.poll() is None, (tmp_path / "kamailio.log").read_text()[-2000:]
        env = {
            "VOICEBOT_SIP_PORT": str(sip_port),
            "VOICEBOT_SIP__REGISTER_URI": f"sip:127.0.0.1:{pbx_port}",
            "VOICEBOT_SIP__USERNAME": "bot",
            "VOICEBOT_SIP__PASSWORD": "s3cret-pw",
            "VOICEBOT_SIP__RTP_PORT_MIN": "22000",
            "VOICEBOT_SIP__RTP_PORT_MAX": "22099",
            "VOICEBOT_SERVER__EVENTS_LOG": str(events),
            "VOICEBOT_ENGINES__TTS": "espeak",
        }
        with gateway(tmp_path, **env) as gw:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if httpx.get(f"{gw.http}/healthz").json()["sip"]["registered"]:
                    break
                time.sleep(0.3)
            assert httpx.get(f"{gw.http}/healthz").json()["sip"]["registered"], gw.log()[-3000:]

            voice = PiperTextToSpeech(noise_scale=0.0, noise_w_scale=0.0)
            speech = voice.synthesize_sync("Hi, what is the balance on my account?")
            audio = np.concatenate([np.zeros(4000, np.int16), speech, np.zeros(4000, np.int16)])
            wav = tmp_path / "caller.wav"
            write_wav(wav, resample_whole(audio, 16000, 8000), 8000, encoding="ulaw")
            pcap = siptools.write_dtmf_pcap(tmp_path / "dtmf.pcap", "5")
            result = siptools.sipp(
                "uac_call.xml", pbx_port, media_port=17400, log_dir=tmp_path,
                keys={"codec_pt": "0", "codec_name": "PCMU"},
                fill={"WAV": str(wav), "CODEC_PT": "0", "DTMF_PCAP": str(pcap),
                      "DTMF_AFTER_MS": "0", "HOLD_MS": "7000", "INFO_DIGIT": "0"},
            )  # fmt: skip
            assert result.returncode == 0, result.stdout[-1500:] + gw.log()[-3000:]
        seen = [json.loads(line) for line in events.read_text().splitlines()]
        kinds = [e["type"] for e in seen]
        assert "call_started" in kinds and "transcript" in kinds and "bot_text" in kinds
        started = next(e for e in seen if e["type"] == "call_started")
        assert "caller" in started["from"]
        assert "balance" in next(e for e in seen if e["type"] == "transcript")["text"].lower()
        assert next(e for e in seen if e["type"] == "call_ended")["reason"] == "caller_hangup"
    finally:
        stop_kamailio(pbx)


def test_wrong_password_is_not_registered(tmp_path: Path) -> None:
    pbx_port, sip_port = free_port(), free_port()
    pbx = start_kamailio(tmp_path, pbx_port, "right-pw")
    try:
        time.sleep(1.0)
        env = {
            "VOICEBOT_SIP_PORT": str(sip_port),
            "VOICEBOT_SIP__REGISTER_URI": f"sip:127.0.0.1:{pbx_port}",
            "VOICEBOT_SIP__USERNAME": "bot",
            "VOICEBOT_SIP__PASSWORD": "wrong-pw",
            "VOICEBOT_ENGINES__TTS": "espeak",
            "VOICEBOT_ENGINES__STT_MODEL": "tiny.en",
        }
        with gateway(tmp_path, **env) as gw:
            time.sleep(3.0)
            assert httpx.get(f"{gw.http}/healthz").json()["sip"]["registered"] is False
            assert "registration failed" in gw.log()
    finally:
        stop_kamailio(pbx)


def test_pyvoip_calls_the_bot_through_kamailio(tmp_path: Path) -> None:
    """pyVoIP, a SIP stack no one here wrote, registers to the same PBX and calls the bot."""
    pytest.importorskip("pyVoIP")
    pbx_port, sip_port = free_port(), free_port()
    pbx = start_kamailio(tmp_path, pbx_port, "pw")
    events = tmp_path / "events.jsonl"
    try:
        time.sleep(1.0)
        env = {
            "VOICEBOT_SIP_PORT": str(sip_port),
            "VOICEBOT_SIP__REGISTER_URI": f"sip:127.0.0.1:{pbx_port}",
            "VOICEBOT_SIP__USERNAME": "bot",
            "VOICEBOT_SIP__PASSWORD": "pw",
            "VOICEBOT_SIP__RTP_PORT_MIN": "22100",
            "VOICEBOT_SIP__RTP_PORT_MAX": "22199",
            "VOICEBOT_SERVER__EVENTS_LOG": str(events),
            "VOICEBOT_ENGINES__TTS": "espeak",
        }
        voice = PiperTextToSpeech(noise_scale=0.0, noise_w_scale=0.0)
        speech = voice.synthesize_sync("Hi, what is the balance on my account?")
        wav = tmp_path / "alice.wav"
        write_wav(wav, np.concatenate([np.zeros(8000, np.int16), speech]))
        with gateway(tmp_path, **env) as gw:
            deadline = time.monotonic() + 15
            while not httpx.get(f"{gw.http}/healthz").json()["sip"]["registered"]:
                assert time.monotonic() < deadline, gw.log()[-2000:]
                time.sleep(0.3)
            run = subprocess.run(
                [sys.executable, "-m", "tests.pyvoip_caller", str(pbx_port), str(free_port()),
                 str(wav), "9", "pw"],
                capture_output=True, text=True, timeout=90, cwd=Path(__file__).parent.parent,
            )  # fmt: skip
            assert run.returncode == 0, run.stderr[-3000:] + gw.log()[-2000:]
            result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["answered"] and result.get("hung_up")
        assert result["loud_fraction"] > 0.05  # the bot's reply reached pyVoIP
        seen = [json.loads(line) for line in events.read_text().splitlines()]
        assert any(e["type"] == "bot_text" for e in seen)
        assert next(e for e in seen if e["type"] == "call_ended")["reason"] == "caller_hangup"
    finally:
        stop_kamailio(pbx)
