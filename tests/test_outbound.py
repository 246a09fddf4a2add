"""Outbound calls placed through `POST /v1/calls` against real peers: SIPp as the callee
(answers and talks, busy, declines, never answers, early media) and Debian's Kamailio as a
trunk that challenges with digest authentication. The record and the webhooks tell each
call's outcome; the callee's RTP capture shows the bot spoke.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import siptools
from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from tests.kamailio import KAMAILIO, start_kamailio, stop_kamailio
from tests.servers import free_port
from tests.webhook_receiver import SECRET, Receiver
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import write_wav

pytestmark = pytest.mark.skipif(not Path(siptools.SIPP).exists(), reason="sipp not installed")

TOKEN = "outbound-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GREETING = "Hello {{first_name}}, this is the clinic calling."
EARLY_SDP = """      v=0
      o=callee 1 1 IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=sendrecv
"""


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def sip_gw(tmp_path_factory, hooks) -> Iterator[tuple[Gateway, Path]]:  # type: ignore[no-untyped-def]
    workdir = tmp_path_factory.mktemp("outbound")
    env = {"VOICEBOT_ENGINES__STT_MODEL": "tiny.en", "VOICEBOT_ENGINES__TTS": "espeak",
           "VOICEBOT_SIP_PORT": str(free_port()), "VOICEBOT_API_TOKEN": TOKEN,
           "VOICEBOT_SIP__RTP_PORT_MIN": "23000", "VOICEBOT_SIP__RTP_PORT_MAX": "23099",
           "VOICEBOT_WEBHOOKS__URLS": f'["{hooks.url()}"]', "VOICEBOT_WEBHOOKS__SECRET": SECRET,
           "VOICEBOT_OUTBOUND__CALLS_PER_SECOND": "1", "VOICEBOT_OUTBOUND__BURST": "3"}  # fmt: skip
    with gateway(workdir, **env) as gw:
        yield gw, workdir


@pytest.fixture(scope="module")
def speech(voice, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """What the callee says once the bot has greeted it, as SIPp plays it (8 kHz µ-law)."""
    audio = place(5.0, (0.3, voice.synthesize_sync("Hi, what is the balance on my account?")))
    path = tmp_path_factory.mktemp("callee") / "callee.wav"
    write_wav(path, resample_whole(audio, 16000, 8000), 8000, encoding="ulaw")
    return path


@pytest.fixture(scope="module")
def silence(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("silence") / "silence.wav"
    write_wav(path, np.zeros(800, np.int16), 8000, encoding="ulaw")
    return path


def new_media_port() -> int:
    return 18000 + 2 * (free_port() % 400)


@contextlib.contextmanager
def callee(workdir: Path, scenario: str, fill: dict[str, str],
           media_port: int | None = None) -> Iterator[tuple[int, int, list]]:  # fmt: skip
    """SIPp answering on a free port with `scenario`; yields (sip port, media port, [the
    finished process]) and waits for it at the end."""
    port, media_port = free_port(), media_port or new_media_port()
    text = (siptools.SIP_DIR / scenario).read_text()
    for name, value in fill.items():
        text = text.replace(f"@{name}@", value)
    path = workdir / f"filled-{port}-{scenario}"
    path.write_text(text)
    proc = subprocess.Popen(
        [siptools.SIPP, "-sf", str(path), "-i", "127.0.0.1", "-p", str(port), "-mi",
         "127.0.0.1", "-mp", str(media_port), "-m", "1", "-timeout", "60s", "-timeout_error",
         "-nostdin", "-trace_err"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    done: list[subprocess.CompletedProcess[str]] = []
    time.sleep(0.3)
    try:
        yield port, media_port, done
    finally:
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))


def dial(gw: Gateway, **body: object) -> httpx.Response:
    return httpx.post(f"{gw.http}/v1/calls", json=body, headers=AUTH, timeout=10)


def record(gw: Gateway, call_id: str, timeout_s: float = 60) -> dict:
    """The call's record once it has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{gw.http}/v1/calls/{call_id}", headers=AUTH, timeout=10)
        if response.status_code == 200 and response.json()["ended_at"]:
            return response.json()
        assert time.monotonic() < deadline, f"call not ended: {response.text[:500]}"
        time.sleep(0.3)


def metric(gw: Gateway, line_start: str) -> float:
    """A sample of /metrics (0 if absent), e.g. 'voicebot_outbound_calls_total{outcome="busy"}'."""
    for line in httpx.get(f"{gw.http}/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


def webhooks(hooks: Receiver, call_id: str, until: str = "call.ended") -> list[dict]:
    import json

    deadline = time.monotonic() + 20
    while True:
        got = [json.loads(r.body) for r in list(hooks.received) if r.call_id == call_id]
        if any(g["type"] == until for g in got):
            return got
        assert time.monotonic() < deadline, f"no {until} webhook: {[g['type'] for g in got]}"
        time.sleep(0.2)


def test_answered_call_greets_and_answers_the_callee(sip_gw, hooks, speech, silence) -> None:  # type: ignore[no-untyped-def]
    gw, workdir = sip_gw
    fill = {"EARLY": "180 Ringing", "EARLY_SDP": "", "EARLY_WAV": str(silence),
            "RING_MS": "500", "SPEAK_AFTER_MS": "4000", "WAV": str(speech),
            "HOLD_MS": "9000"}  # fmt: skip
    media_port = new_media_port()
    with siptools.rtp_capture(media_port, workdir / "callee.pcap") as cap:  # noqa: SIM117
        with callee(workdir, "uas_answer.xml", fill, media_port) as (port, _, done):
            response = dial(gw, to=f"sip:callee@127.0.0.1:{port}", variables={"firstName": "Ada"},
                            greeting=GREETING)  # fmt: skip
            assert response.status_code == 201, response.text
            call_id = response.json()["call_id"]
            assert response.headers["location"] == f"/v1/calls/{call_id}"
    assert done[0].returncode == 0, done[0].stdout[-2000:] + gw.log()[-3000:]
    rec = record(gw, call_id)
    assert rec["direction"] == "outbound" and rec["transport"] == "sip"
    assert rec["end_reason"] == "caller_hangup" and rec["answered_at"]
    assert rec["variables"] == {"first_name": "Ada"}
    bot = [t["text"] for t in rec["turns"] if t["speaker"] == "bot"]
    user = [t["text"].lower() for t in rec["turns"] if t["speaker"] == "user"]
    assert bot and bot[0] == "Hello Ada, this is the clinic calling.", rec["turns"]
    assert any("balance" in u for u in user), rec["turns"]
    assert any(b.startswith("Your account balance is") for b in bot[1:]), rec["turns"]
    # The bot's voice reached the callee (µ-law RTP with speech in it).
    heard = siptools.decode_g711(siptools.read_rtp_pcap(cap), 0)
    assert len(heard) > 8000 * 2 and np.abs(heard).max() > 2000
    kinds = [h["type"] for h in webhooks(hooks, call_id)]
    assert kinds[0] == "call.started" and "call.answered" in kinds and kinds[-1] == "call.ended"
    started = next(h for h in webhooks(hooks, call_id) if h["type"] == "call.started")
    assert started["data"]["direction"] == "outbound"


@pytest.mark.parametrize(("status", "reason", "outcome"),
                         [(486, "Busy Here", "busy"), (603, "Decline", "rejected")])  # fmt: skip
def test_refused_call_has_its_outcome(sip_gw, hooks, status, reason, outcome) -> None:  # type: ignore[no-untyped-def]
    gw, workdir = sip_gw
    fill = {"STATUS": str(status), "REASON": reason, "RING_MS": "300"}
    with callee(workdir, "uas_refuse.xml", fill) as (port, _, done):
        response = dial(gw, to=f"sip:callee@127.0.0.1:{port}")
        assert response.status_code == 201, response.text
        call_id = response.json()["call_id"]
    assert done[0].returncode == 0, done[0].stdout[-2000:]  # our ACK came
    rec = record(gw, call_id)
    assert rec["end_reason"] == outcome and rec["answered_at"] is None
    assert rec["direction"] == "outbound" and rec["turns"] == []
    kinds = [h["type"] for h in webhooks(hooks, call_id)]
    assert kinds == ["call.started", "call.ended"], kinds
    ended = webhooks(hooks, call_id)[-1]["data"]
    assert ended["reason"] == outcome
    assert metric(gw, f'voicebot_outbound_calls_total{{outcome="{outcome}"}}') >= 1


def test_unanswered_call_is_cancelled_at_the_ring_timeout(sip_gw) -> None:  # type: ignore[no-untyped-def]
    gw, workdir = sip_gw
    with callee(workdir, "uas_no_answer.xml", {}) as (port, _, done):
        t0 = time.monotonic()
        response = dial(gw, to=f"sip:callee@127.0.0.1:{port}", ring_timeout_s=2)
        assert response.status_code == 201, response.text
        call_id = response.json()["call_id"]
        rec = record(gw, call_id)
        took = time.monotonic() - t0
    assert done[0].returncode == 0, done[0].stdout[-2000:]  # CANCEL, then ACK of the 487
    assert rec["end_reason"] == "no_answer", rec
    assert 1.5 < took < 15


def test_api_hangup_while_ringing_cancels(sip_gw) -> None:  # type: ignore[no-untyped-def]
    gw, workdir = sip_gw
    with callee(workdir, "uas_no_answer.xml", {}) as (port, _, done):
        call_id = dial(gw, to=f"sip:callee@127.0.0.1:{port}", ring_timeout_s=60).json()["call_id"]
        time.sleep(1.0)
        hangup = httpx.delete(f"{gw.http}/v1/calls/{call_id}", headers=AUTH, timeout=10)
        assert hangup.status_code == 202, hangup.text
        rec = record(gw, call_id)
    assert done[0].returncode == 0, done[0].stdout[-2000:]
    assert rec["end_reason"] == "cancelled", rec


def test_early_media_is_ignored_until_the_answer(sip_gw, speech, silence) -> None:  # type: ignore[no-untyped-def]
    gw, workdir = sip_gw
    fill = {"EARLY": "183 Session Progress", "EARLY_SDP": EARLY_SDP,
            "EARLY_WAV": str(speech), "RING_MS": "2500", "SPEAK_AFTER_MS": "3000",
            "WAV": str(silence), "HOLD_MS": "1000"}  # fmt: skip
    media_port = new_media_port()
    with siptools.rtp_capture(media_port, workdir / "early.pcap") as cap:  # noqa: SIM117
        with callee(workdir, "uas_answer.xml", fill, media_port) as (port, _, done):
            t0 = time.time()
            response = dial(gw, to=f"sip:callee@127.0.0.1:{port}", greeting=GREETING,
                            variables={"first_name": "Bo"})  # fmt: skip
            call_id = response.json()["call_id"]
    assert done[0].returncode == 0, done[0].stdout[-2000:]
    rec = record(gw, call_id)
    assert rec["end_reason"] == "caller_hangup" and rec["info"]["early_media"] is False
    # The callee's early announcement (a question) was not taken as the caller's turn, and
    # nothing of the bot went out before the answer (~2.5 s after the dial).
    assert [t["speaker"] for t in rec["turns"]] == ["bot"], rec["turns"]
    packets = siptools.read_rtp_pcap(cap)
    assert packets and min(p.time for p in packets) > t0 + 2.0


def test_bad_requests_are_refused(sip_gw) -> None:  # type: ignore[no-untyped-def]
    gw, _ = sip_gw
    assert dial(gw, to="sip:a@b\r\nX-Evil: 1").status_code == 400
    assert dial(gw, to="12345").status_code == 400  # a number, and no trunk to dial it
    assert dial(gw, to="sip:a@127.0.0.1", early_media="maybe").status_code == 422
    assert dial(gw, to="sip:a@127.0.0.1", unknown=1).status_code == 422
    no_auth = httpx.post(f"{gw.http}/v1/calls", json={"to": "sip:a@127.0.0.1"}, timeout=10)
    assert no_auth.status_code == 401


def test_unreachable_and_the_call_rate(sip_gw) -> None:  # type: ignore[no-untyped-def]
    """Nothing answers at the target: timer B (32 s) gives `unreachable`. Calls placed
    faster than the configured rate (1/s, burst 3) get 429 with Retry-After."""
    gw, _ = sip_gw
    dead = free_port()  # nothing listens there
    time.sleep(3.5)  # the bucket refills from the tests before
    placed, limited = [], []
    for _ in range(6):
        response = dial(gw, to=f"sip:nobody@127.0.0.1:{dead}")
        (placed if response.status_code == 201 else limited).append(response)
    assert len(placed) >= 3 and limited, [r.status_code for r in placed + limited]
    assert all(r.status_code == 429 and int(r.headers["retry-after"]) >= 1 for r in limited)
    assert metric(gw, "voicebot_outbound_limited_total") == len(limited)
    rec = record(gw, placed[0].json()["call_id"], timeout_s=60)
    assert rec["end_reason"] == "unreachable", rec


@pytest.mark.skipif(not Path(KAMAILIO).exists(), reason="kamailio not installed")
@pytest.mark.parametrize(("password", "outcome"), [("trunk-pw", "caller_hangup"),
                                                    ("wrong-pw", "auth_failed")])  # fmt: skip
def test_call_through_a_trunk_with_digest_auth(  # type: ignore[no-untyped-def]
    sip_gw, silence, tmp_path, password, outcome
) -> None:
    gw, _ = sip_gw
    kport = free_port()
    trunk = start_kamailio(tmp_path, kport, "trunk-pw", template="kamailio_trunk.cfg.in")
    try:
        time.sleep(1.0)
        fill = {"EARLY": "180 Ringing", "EARLY_SDP": "", "EARLY_WAV": str(silence),
                "RING_MS": "300", "SPEAK_AFTER_MS": "2500", "WAV": str(silence),
                "HOLD_MS": "500"}  # fmt: skip
        with callee(tmp_path, "uas_answer.xml", fill) as (port, _, done):
            response = dial(gw, to=f"sip:callee@127.0.0.1:{port}",
                            trunk={"proxy": f"sip:127.0.0.1:{kport}", "username": "bot",
                                   "password": password},
                            greeting=GREETING, variables={"first_name": "Cy"})  # fmt: skip
            assert response.status_code == 201, response.text
            rec = record(gw, response.json()["call_id"])
            if outcome == "auth_failed":
                # The callee never got the INVITE: stop it rather than wait out its timeout.
                subprocess.run(["pkill", "-f", "--", f"-p {port} "], check=False)
        log = (tmp_path / "kamailio.log").read_text()[-2000:]
        assert rec["end_reason"] == outcome, (rec, log)
        if outcome != "auth_failed":
            assert done[0].returncode == 0, done[0].stdout[-2000:]
            assert rec["answered_at"] and rec["turns"][0]["text"].startswith("Hello Cy")
    finally:
        stop_kamailio(trunk)


def test_early_media_passed_to_the_bot(sip_gw, speech, silence) -> None:  # type: ignore[no-untyped-def]
    """With `early_media: pass` the bot hears the callee's 183 announcement (it becomes the
    caller's turn) and still sends nothing before the answer."""
    gw, workdir = sip_gw
    fill = {"EARLY": "183 Session Progress", "EARLY_SDP": EARLY_SDP,
            "EARLY_WAV": str(speech), "RING_MS": "6000", "SPEAK_AFTER_MS": "2000",
            "WAV": str(silence), "HOLD_MS": "2000"}  # fmt: skip
    media_port = new_media_port()
    with siptools.rtp_capture(media_port, workdir / "early-pass.pcap") as cap:  # noqa: SIM117
        with callee(workdir, "uas_answer.xml", fill, media_port) as (port, _, done):
            t0 = time.time()
            response = dial(gw, to=f"sip:callee@127.0.0.1:{port}", early_media="pass")
            call_id = response.json()["call_id"]
    assert done[0].returncode == 0, done[0].stdout[-2000:]
    rec = record(gw, call_id)
    assert rec["info"]["early_media"] is True and rec["end_reason"] == "caller_hangup"
    user = [t["text"].lower() for t in rec["turns"] if t["speaker"] == "user"]
    assert any("balance" in u for u in user), rec["turns"]
    packets = siptools.read_rtp_pcap(cap)
    assert packets and min(p.time for p in packets) > t0 + 5.5  # the answer came at ~6 s
