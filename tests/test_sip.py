"""The SIP leg against a real SIP peer: SIPp over loopback, tcpdump to hear the bot's RTP."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tests import siptools
from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from tests.servers import free_port
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import write_wav
from voicebot.models.vad import detect_speech_segments

pytestmark = pytest.mark.skipif(
    not (Path(siptools.SIPP).exists() and Path(siptools.TCPDUMP).exists()),
    reason="sipp / tcpdump not installed",
)
SR = 16000


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sip")


@pytest.fixture(scope="module")
def sip_gw(workdir: Path) -> tuple[Gateway, int, Path]:
    sip_port = free_port()
    events = workdir / "events.jsonl"
    with gateway(
        workdir,
        VOICEBOT_SIP_PORT=str(sip_port),
        VOICEBOT_SERVER__EVENTS_LOG=str(events),
        VOICEBOT_SIP__RTP_PORT_MIN="21000",
        VOICEBOT_SIP__RTP_PORT_MAX="21199",
    ) as gw:
        yield gw, sip_port, events


def caller_wav(path: Path, audio16k: np.ndarray, encoding: str) -> Path:
    write_wav(path, resample_whole(audio16k, SR, 8000), 8000, encoding=encoding)
    return path


def call_events(events_log: Path, sip_call_id_part: str) -> list[dict]:
    out = []
    for line in events_log.read_text().splitlines():
        event = json.loads(line)
        if sip_call_id_part in event["call_id"]:
            out.append(event)
    return out


def run_call(sip_gw, workdir: Path, name: str, audio16k: np.ndarray, codec: str,
             hold_ms: int, dtmf: str = "", info_digit: str = "0",
             ) -> tuple[list[dict], np.ndarray, list]:  # fmt: skip
    gw, sip_port, events = sip_gw
    pt = {"PCMU": 0, "PCMA": 8}[codec]
    wav = caller_wav(workdir / f"{name}.wav", audio16k, "ulaw" if pt == 0 else "alaw")
    pcap = siptools.write_dtmf_pcap(workdir / f"{name}-dtmf.pcap", dtmf or "1")
    media_port = 16000 + 2 * (abs(hash(name)) % 500)
    before = set(events.read_text().splitlines()) if events.exists() else set()
    with siptools.rtp_capture(media_port, workdir / f"{name}.pcap") as cap:
        result = siptools.sipp(
            "uac_call.xml", sip_port, media_port=media_port, log_dir=workdir,
            keys={"codec_pt": str(pt), "codec_name": codec},
            fill={"WAV": str(wav), "CODEC_PT": str(pt), "DTMF_PCAP": str(pcap),
                  "DTMF_AFTER_MS": "500" if dtmf else "0", "HOLD_MS": str(hold_ms),
                  "INFO_DIGIT": info_digit},
        )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + gw.log()[-3000:]
    time.sleep(0.3)
    new = [json.loads(line) for line in events.read_text().splitlines() if line not in before]
    packets = siptools.read_rtp_pcap(cap)
    return new, siptools.decode_g711(packets, pt), packets


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_call_with_speech_gets_a_spoken_answer(sip_gw, workdir, voice, codec: str) -> None:
    question = voice.synthesize_sync("Hi, what is the balance on my account?")
    audio = place(3.0, (0.3, question))
    events, bot8k, packets = run_call(sip_gw, workdir, f"call-{codec}", audio, codec, 8000)
    kinds = [e["type"] for e in events if e["type"] != "vad"]
    assert kinds[0] == "call_started" and kinds[-1] == "call_ended"
    started = events[0]
    assert "caller" in started["from"] and "bot" in started["to"] and started["sip_call_id"]
    assert "balance" in next(e for e in events if e["type"] == "transcript")["text"].lower()
    assert next(e for e in events if e["type"] == "call_ended")["reason"] == "caller_hangup"
    # What the bot sent back is speech, not silence, in the negotiated codec, 20 ms packets.
    assert {p.payload_type for p in packets} == {0 if codec == "PCMU" else 8}
    assert {len(p.payload) for p in packets} == {160}
    seqs = np.array([p.seq for p in packets])
    assert np.all(np.diff(seqs) % 65536 == 1)
    assert np.all(np.diff(np.array([p.timestamp for p in packets])) % 2**32 == 160)
    segments = detect_speech_segments(resample_whole(bot8k, 8000, SR))
    assert segments and sum(s.end - s.start for s in segments) > 2.0


def test_rfc4733_dtmf_becomes_dtmf_events(sip_gw, workdir, voice) -> None:
    audio = np.zeros(SR, np.int16)
    events, _, _ = run_call(sip_gw, workdir, "dtmf", audio, "PCMU", 2500, dtmf="19#*",
                            info_digit="7")  # fmt: skip
    digits = [e["digit"] for e in events if e["type"] == "dtmf"]
    # RFC 4733 digits in order; the INFO one (SIPp plays the pcap in the background) anywhere.
    assert [d for d in digits if d != "7"] == ["1", "9", "#", "*"] and digits.count("7") == 1


def test_barge_in_over_sip_silences_the_bot(sip_gw, workdir, voice) -> None:
    question = voice.synthesize_sync("What is the balance on my account?")
    # One breath: with "Stop, stop," first, an end-of-turn model may rightly end the turn at
    # that pause and the bot answer it before the caller goes on (a second barge-in).
    interruption = voice.synthesize_sync("I need to talk to somebody about my order.")
    audio = place(10.0, (0.3, question), (5.0, interruption))
    events, _, packets = run_call(sip_gw, workdir, "barge", audio, "PCMU", 10_500)
    barge = [e for e in events if e["type"] == "interrupted"]
    assert len(barge) == 1 and 0 < barge[0]["latency_ms"] <= 150
    # Bot audio on the call timeline: packet k of ours left at tick k (t = 0.02 k).
    ts0 = packets[0].timestamp
    position = {(p.timestamp - ts0) % 2**32 // 160: p for p in packets if p.payload_type == 0}
    flushed_at = barge[0]["t"]
    start_k = int(flushed_at / 0.02) + 3
    window = [position[k] for k in range(start_k, start_k + 50) if k in position]
    assert len(window) >= 45
    level = max(np.abs(siptools.decode_g711([p], 0)).max() for p in window)
    assert level < 100, "bot still talking after the barge-in"


def test_cancel_before_answer(sip_gw, workdir) -> None:
    _, sip_port, _ = sip_gw
    result = siptools.sipp("uac_cancel.xml", sip_port, media_port=17000, log_dir=workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_options_keepalive(sip_gw, workdir) -> None:
    _, sip_port, _ = sip_gw
    result = siptools.sipp("uac_options.xml", sip_port, media_port=17100, log_dir=workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_errors_and_malformed_requests(sip_gw, workdir) -> None:
    _, sip_port, _ = sip_gw
    result = siptools.sipp("uac_errors.xml", sip_port, media_port=17200, log_dir=workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _udp_exchange(port: int, data: bytes, wait: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.bind(("127.0.0.1", 0))
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


@pytest.mark.parametrize(
    "junk",
    [b"\x00\xff" * 300, b"INVITE\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n", "é".encode("latin-1") * 50,
     b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKx\r\n\r\n"],
    ids=["binary", "no-headers", "stray-response", "not-utf8", "missing-headers"],
)  # fmt: skip
def test_garbage_never_kills_the_server(sip_gw, junk: bytes) -> None:
    gw, sip_port, _ = sip_gw
    reply = _udp_exchange(sip_port, junk, wait=0.5)
    if junk.startswith(b"OPTIONS"):  # has a Via: gets a 400 saying what is missing
        assert reply is not None and reply.startswith(b"SIP/2.0 400")
        assert b"missing" in reply
    options = (
        f"OPTIONS sip:bot@127.0.0.1:{sip_port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKalive\r\nFrom: <sip:a@b>;tag=1\r\n"
        f"To: <sip:bot@127.0.0.1>\r\nCall-ID: alive-{len(junk)}\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    alive = _udp_exchange(sip_port, options)
    assert alive is not None and alive.startswith(b"SIP/2.0 200")
    assert gw.proc.poll() is None


def test_source_allow_list(tmp_path: Path) -> None:
    sip_port = free_port()
    env = {"VOICEBOT_SIP_PORT": str(sip_port), "VOICEBOT_SIP_ALLOW": '["10.0.0.0/8"]',
           "VOICEBOT_ENGINES__TTS": "espeak", "VOICEBOT_ENGINES__STT_MODEL": "tiny.en"}  # fmt: skip
    with gateway(tmp_path, **env):
        options = (
            f"OPTIONS sip:bot@127.0.0.1:{sip_port} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKdeny\r\nFrom: <sip:a@b>;tag=1\r\n"
            "To: <sip:bot@127.0.0.1>\r\nCall-ID: deny-1\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        reply = _udp_exchange(sip_port, options)
        assert reply is not None and reply.startswith(b"SIP/2.0 403")


def test_blind_transfer_by_refer(sip_gw, workdir, voice) -> None:
    gw, sip_port, events_log = sip_gw
    speech = voice.synthesize_sync("Can I talk to a person please?")
    wav = caller_wav(workdir / "transfer.wav", place(4.0, (0.3, speech)), "ulaw")
    before = set(events_log.read_text().splitlines())
    result = siptools.sipp(
        "uac_transfer.xml", sip_port, media_port=17300, log_dir=workdir,
        fill={"WAV": str(wav), "CODEC_PT": "0"}, timeout_s=45,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + gw.log()[-2000:]
    # The scenario checks (check_it) that Refer-To is the configured sip:queue@localhost.
    time.sleep(0.3)
    new = [json.loads(x) for x in events_log.read_text().splitlines() if x not in before]
    said = [e["text"] for e in new if e["type"] == "bot_text"]
    assert said and said[0].startswith("Of course. I am transferring you")
    # Published once the REFER is accepted, before the call ends as transferred.
    kinds = [e["type"] for e in new]
    assert kinds.index("transferred") < kinds.index("call_ended")
    assert next(e for e in new if e["type"] == "transferred")["target"] == "sip:queue@localhost"
    assert next(e for e in new if e["type"] == "call_ended")["reason"] == "transferred"


def test_hold_and_unhold_by_reinvite(sip_gw, workdir) -> None:
    _, sip_port, _ = sip_gw
    media_port = 17500
    with siptools.rtp_capture(media_port, workdir / "hold.pcap") as cap:
        result = siptools.sipp("uac_hold.xml", sip_port, media_port=media_port,
                               log_dir=workdir, fill={"PHASE_MS": "1500"})  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    packets = siptools.read_rtp_pcap(cap)
    assert packets, "no RTP before hold"
    times = np.array([p.time for p in packets])
    times -= times[0]
    # ~1.5 s of RTP, ~1.5 s of none while held, then RTP again: look for the gap.
    gaps = np.diff(times)
    assert gaps.max() > 1.2, f"bot kept sending on hold (largest gap {gaps.max():.2f} s)"
    assert times[-1] > gaps.max() + 1.0  # and it resumed afterwards


def _read_until(s: socket.socket, status: int, wait: float = 5.0) -> bytes:
    s.settimeout(wait)
    while True:
        reply = s.recv(65535)
        if reply.startswith(f"SIP/2.0 {status}".encode()):
            return reply


def test_over_capacity_is_busy_here_with_retry_after(tmp_path: Path) -> None:
    sip_port = free_port()
    env = {"VOICEBOT_SIP_PORT": str(sip_port), "VOICEBOT_SIP__MAX_CALLS": "1",
           "VOICEBOT_ENGINES__TTS": "espeak", "VOICEBOT_ENGINES__STT_MODEL": "tiny.en",
           "VOICEBOT_SIP__RTP_PORT_MIN": "21400",
           "VOICEBOT_SIP__RTP_PORT_MAX": "21419"}  # fmt: skip
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" \
          "m=audio 17300 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"  # fmt: skip

    def invite(call_id: str, local_port: int) -> bytes:
        return (
            f"INVITE sip:bot@127.0.0.1:{sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK{call_id}\r\n"
            f"From: <sip:caller@127.0.0.1>;tag={call_id}\r\nTo: <sip:bot@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@127.0.0.1:{local_port}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        ).encode()

    with gateway(tmp_path, **env) as gw:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:  # fmt: skip
            first.bind(("127.0.0.1", 0))
            second.bind(("127.0.0.1", 0))
            first.sendto(invite("cap-1", first.getsockname()[1]), ("127.0.0.1", sip_port))
            _read_until(first, 200)  # the one call allowed is up
            second.sendto(invite("cap-2", second.getsockname()[1]), ("127.0.0.1", sip_port))
            busy = _read_until(second, 486)
            assert b"Retry-After: " in busy
            assert b"Busy Here" in busy
        assert gw.proc.poll() is None
