"""Transfer with context: what the human agent's side gets, and what a failed transfer does.

- The Refer-To with embedded headers (RFC 3261 section 19.1.1 escaping, RFC 7433
  User-to-User), unit by unit.
- `CallActions`: a transport's refusal leaves the call up and reports the outcome.
- `SipCall.transfer` with a fake endpoint: each RFC 3515 / RFC 4488 outcome (progress waited
  past, final sipfrag, refusal, timeout, Refer-Sub: false, no final report, the caller's BYE).
- SIPp as the transferee against a real gateway: REFER 202 + NOTIFY 100 / 200 (transferred:
  the Refer-To carries the hex call id and the configured X- headers, the record and the
  `call.transferred` webhook the transcript and summary); REFER 603 and NOTIFY 486 (failed:
  the bot says so, the call stays up and the caller's next question is answered).
- A Twilio media stream (no REFER there): the transfer is announced by `call.transferred`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from tests import siptools, stream_clients
from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from tests.servers import free_port
from tests.webhook_receiver import SECRET, Receiver
from voicebot.agent.call_actions import (
    CallActions,
    TransferFailedError,
    TransferOutcome,
)
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import write_wav
from voicebot.config import Settings
from voicebot.models.base import CallAction
from voicebot.telephony.call import DialogState, SipCall
from voicebot.telephony.message import SipRequest, SipResponse, parse_message
from voicebot.telephony.refer_to import (
    embed_headers,
    embedded_headers,
    escape_header_part,
    refer_to,
    uui_value,
)

SR = 16000
FAILED = "Sorry, I couldn't transfer you. I'm still here. How else can I help?"
HEADERS = {"X-Queue": "billing", "X-Note": "vip; priority=1"}
ASK = "Can I talk to a person please?"
QUESTION = "What is the balance on my account?"


# -- the Refer-To ---------------------------------------------------------------------------
def test_header_parts_are_escaped_as_rfc3261_19_1_1_says() -> None:
    # `;` `=` `&` `@` `,` space and `%` would end or change the header: escaped; the
    # hnv-unreserved and mark characters stay.
    escaped = "vip%3B%20priority%3D1%20%26%20a%40b%2Cc%25"
    assert escape_header_part("vip; priority=1 & a@b,c%") == escaped
    assert escape_header_part("[]/?:+$-_.!~*'()") == "[]/?:+$-_.!~*'()"
    assert escape_header_part("Zoë") == "Zo%C3%AB"  # UTF-8 octets
    assert escape_header_part('<sip:"x">') == "%3Csip:%22x%22%3E"


def test_headers_go_after_the_uri_parameters_and_any_headers_it_has() -> None:
    with_params = "sip:q@pbx;transport=udp"
    assert embed_headers(with_params, [("X-A", "1")]) == with_params + "?X-A=1"
    assert embed_headers("<sip:q@pbx?X-A=1>", [("X-B", "2")]) == "sip:q@pbx?X-A=1&X-B=2"
    assert embed_headers("sip:q@pbx", []) == "sip:q@pbx"


def test_refer_to_carries_the_hex_call_id_as_user_to_user_and_the_extra_headers() -> None:
    call_id = "sip-1-234@127.0.0.1"
    value = refer_to("sip:queue@localhost", call_id, HEADERS, uui_purpose="voicebot-call-id")
    hex_id = call_id.encode().hex()
    assert value == (
        f"<sip:queue@localhost?User-to-User={hex_id}%3Bencoding%3Dhex%3Bpurpose%3Dvoicebot-call-id"
        "&X-Queue=billing&X-Note=vip%3B%20priority%3D1>"
    )
    headers = dict(embedded_headers(value))
    assert headers["X-Note"] == "vip; priority=1"
    uui, *params = headers["User-to-User"].split(";")
    assert bytes.fromhex(uui).decode() == call_id  # RFC 7433 section 4.1, encoding=hex
    assert params == ["encoding=hex", "purpose=voicebot-call-id"]
    assert uui_value(b"\x01", "") == "01;encoding=hex"
    assert refer_to("sip:q@x", call_id, {}, uui=False) == "<sip:q@x>"
    # In a whole REFER, our parser reads the Refer-To as one header, brackets and all.
    message = parse_message(
        "REFER sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\n"
        "From: <sip:bot@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 2 REFER\r\n"
        f"Refer-To: {value}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert message.get("Refer-To") == value


# -- CallActions ----------------------------------------------------------------------------
class _Control:
    def __init__(self, result: TransferOutcome | Exception) -> None:
        self.result = result
        self.targets: list[str] = []

    async def hangup(self) -> None:
        raise AssertionError("not asked")

    async def transfer(self, target: str) -> TransferOutcome:
        self.targets.append(target)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def _perform(result: TransferOutcome | Exception) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {"end": [], "ok": [], "failed": [], "error": []}

    async def scenario() -> None:
        actions = CallActions(
            _Control(result), seen["end"].append, lambda s, e: seen["error"].append(s),
            on_transferred=lambda t, o: seen["ok"].append((t, o)),
            on_transfer_failed=lambda t, o: seen["failed"].append((t, o)),
        )  # fmt: skip
        actions.perform(CallAction(kind="transfer", target="sip:q@x"))
        assert actions.pending is not None
        for _ in range(5):
            await asyncio.sleep(0)
        assert actions.pending is None

    asyncio.run(scenario())
    return seen


def test_a_refused_transfer_leaves_the_call_up_with_its_outcome() -> None:
    seen = _perform(TransferFailedError(603, "Decline"))
    assert seen["end"] == [] and seen["ok"] == [] and seen["error"] == []
    assert seen["failed"] == [("sip:q@x", TransferOutcome(603, "Decline"))]
    # A transport bug is an error event too, and still not a dead call.
    seen = _perform(RuntimeError("boom"))
    assert seen["end"] == [] and seen["error"] == ["call control transfer"]
    assert seen["failed"][0][1].status is None and "boom" in seen["failed"][0][1].reason


def test_a_done_transfer_ends_the_call_as_transferred() -> None:
    seen = _perform(TransferOutcome(200, "OK"))
    assert seen["end"] == ["transferred"] and seen["failed"] == []
    assert seen["ok"] == [("sip:q@x", TransferOutcome(200, "OK"))]


# -- SipCall.transfer's outcomes, with a fake endpoint ----------------------------------------
class _Endpoint:
    """Answers our in-dialog requests as told, and keeps them."""

    def __init__(self, refer: SipResponse | None) -> None:
        self.refer = refer  # None: no answer (the transaction times out)
        self.sent: list[SipRequest] = []

    async def request(self, request: SipRequest, addr: tuple[str, int],
                      timeout: float = 8.0) -> SipResponse:  # fmt: skip
        self.sent.append(request)
        if request.method == "BYE":
            return SipResponse(status=200, reason="OK")
        if self.refer is None:
            raise TimeoutError("no final response to REFER")
        return self.refer


def _sip_call(refer: SipResponse | None, notify_timeout_s: float = 5.0) -> SipCall:
    settings = Settings(sip={"transfer_headers": {"X-Queue": "billing"},
                             "transfer_notify_timeout_s": notify_timeout_s})  # fmt: skip
    host = SimpleNamespace(settings=settings, endpoint=_Endpoint(refer), address="127.0.0.1",
                           port=5060, contact="<sip:voicebot@127.0.0.1:5060>")  # fmt: skip
    invite = parse_message(
        b"INVITE sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi\r\n"
        b"From: <sip:caller@127.0.0.1:5070>;tag=c1\r\nTo: <sip:bot@127.0.0.1>\r\n"
        b"Call-ID: unit-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:5070>\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert isinstance(invite, SipRequest)
    call = SipCall(host, invite, ("127.0.0.1", 5070))  # type: ignore[arg-type]
    call.state = DialogState.CONFIRMED
    return call


def _methods(call: SipCall) -> list[str]:
    return [r.method for r in call.gateway.endpoint.sent]  # type: ignore[attr-defined]


def _transfer(call: SipCall, *notifies: str, bye_after: bool = False) -> TransferOutcome:
    async def scenario() -> TransferOutcome:
        task = asyncio.create_task(call.transfer("sip:queue@localhost"))
        await asyncio.sleep(0.01)
        for frag in notifies:
            call.notify.put_nowait(frag)
        if bye_after:
            call.caller_hung_up()
        return await task

    return asyncio.run(scenario())


def test_sip_transfer_waits_past_progress_for_the_final_sipfrag() -> None:
    call = _sip_call(SipResponse(status=202, reason="Accepted"))
    outcome = _transfer(call, "SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 200 OK\r\n")
    assert outcome == TransferOutcome(200, "OK") and _methods(call) == ["REFER", "BYE"]
    refer = call.gateway.endpoint.sent[0]  # type: ignore[attr-defined]
    assert refer.get("Refer-To") == refer_to("sip:queue@localhost", "sip-unit-1",
                                             {"X-Queue": "billing"}, uui_purpose="voicebot-call-id")
    # A final failure in a sipfrag: the call stays up (no BYE).
    call = _sip_call(SipResponse(status=202, reason="Accepted"))
    with pytest.raises(TransferFailedError) as failed:
        _transfer(call, "SIP/2.0 100 Trying", "SIP/2.0 503 Service Unavailable")
    assert (failed.value.status, failed.value.reason) == (503, "Service Unavailable")
    assert _methods(call) == ["REFER"] and call.state is DialogState.CONFIRMED


def test_a_failed_transfer_is_reported_once_the_caller_takes_the_call_off_hold() -> None:
    call = _sip_call(SipResponse(status=202, reason="Accepted"))
    rtp = SimpleNamespace(send_enabled=False)  # the transferee held us (a=sendonly)
    call.rtp = rtp  # type: ignore[assignment]

    async def scenario() -> float:
        task = asyncio.create_task(call.transfer("sip:queue@localhost"))
        await asyncio.sleep(0.01)
        call.notify.put_nowait("SIP/2.0 486 Busy Here")
        failed_at = asyncio.get_running_loop().time()
        asyncio.get_running_loop().call_later(0.3, setattr, rtp, "send_enabled", True)  # unhold
        with pytest.raises(TransferFailedError):
            await task
        return asyncio.get_running_loop().time() - failed_at

    waited = asyncio.run(scenario())
    assert 0.28 <= waited < 1.0, waited
    call.rtp = None


def test_sip_transfer_refused_or_unanswered_fails_and_the_dialog_stays() -> None:
    call = _sip_call(SipResponse(status=603, reason="Decline"))
    with pytest.raises(TransferFailedError) as failed:
        _transfer(call)
    assert (failed.value.status, failed.value.reason) == (603, "Decline")
    call = _sip_call(None)
    with pytest.raises(TransferFailedError) as failed:
        _transfer(call)
    assert failed.value.status == 408 and call.state is DialogState.CONFIRMED


def test_sip_transfer_accepted_without_a_final_report_is_handed_over_unconfirmed() -> None:
    # No final NOTIFY within the bound: done, unconfirmed, and our leg hung up.
    call = _sip_call(SipResponse(status=202, reason="Accepted"), notify_timeout_s=0.2)
    outcome = _transfer(call, "SIP/2.0 100 Trying")
    assert (outcome.status, outcome.confirmed) == (202, False) and "0.2 s" in outcome.reason
    assert _methods(call) == ["REFER", "BYE"]
    # RFC 4488 Refer-Sub: false: no NOTIFY will come.
    accepted = SipResponse(status=202, reason="Accepted")
    accepted.add("Refer-Sub", "false")
    call = _sip_call(accepted)
    outcome = _transfer(call)
    assert (outcome.status, outcome.confirmed) == (202, False) and "Refer-Sub" in outcome.reason
    # The caller's side hangs up on us while we wait: it went to the target.
    call = _sip_call(SipResponse(status=202, reason="Accepted"))
    outcome = _transfer(call, bye_after=True)
    assert (outcome.status, outcome.confirmed) == (202, False) and "left" in outcome.reason
    assert _methods(call) == ["REFER"]  # no BYE of ours: the dialog is already over


# -- SIP: SIPp as the transferee -------------------------------------------------------------
pytestmark_sip = pytest.mark.skipif(
    not (Path(siptools.SIPP).exists() and Path(siptools.TCPDUMP).exists()),
    reason="sipp / tcpdump not installed",
)

_ACCEPT = """  <send>
    <![CDATA[
      SIP/2.0 202 Accepted
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:caller@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
"""


def _refuse(status: int, reason: str) -> str:
    return _ACCEPT.replace("202 Accepted", f"{status} {reason}").replace(
        "      Contact: <sip:caller@[local_ip]:[local_port]>\n", ""
    )


def _notify(cseq: int, state: str, frag: str) -> str:
    """A NOTIFY of the REFER's implicit subscription (RFC 3515 section 2.4.4), answered."""
    return f"""  <send retrans="500">
    <![CDATA[
      NOTIFY sip:voicebot@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "SIPp caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]xfer[call_number]
      To: <sip:bot@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} NOTIFY
      Contact: <sip:caller@[local_ip]:[local_port]>
      Event: refer
      Subscription-State: {state}
      Content-Type: message/sipfrag;version=2.0
      Max-Forwards: 70
      Content-Length: [len]

      {frag}
    ]]>
  </send>
  <recv response="200"/>
"""


_BOT_HANGS_UP = """  <recv request="BYE" timeout="15000"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""


def _talk_then_hang_up(ms: int, cseq: int) -> str:
    """The call goes on (the WAV keeps playing) for `ms`, then the caller hangs up."""
    return f"""  <pause milliseconds="{ms}"/>
  <send retrans="500">
    <![CDATA[
      BYE sip:bot@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "SIPp caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]xfer[call_number]
      To: <sip:bot@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} BYE
      Contact: <sip:caller@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
"""


def _ere(text: str) -> str:
    """`text` as a POSIX extended regular expression matching itself, in an XML attribute."""
    out = "".join("\\" + c if c in ".[]()*+?{}|^$\\" else c for c in text)
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        out = out.replace(char, entity)
    return out


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def xfer_gw(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[
    tuple[Gateway, int, Path, Path]
]:  # fmt: skip
    workdir = tmp_path_factory.mktemp("transfer")
    sip_port = free_port()
    events = workdir / "events.jsonl"
    with gateway(
        workdir,
        VOICEBOT_SIP_PORT=str(sip_port),
        VOICEBOT_SERVER__EVENTS_LOG=str(events),
        VOICEBOT_SIP__RTP_PORT_MIN="21400",
        VOICEBOT_SIP__RTP_PORT_MAX="21599",
        VOICEBOT_SIP__TRANSFER_HEADERS=json.dumps(HEADERS),
        VOICEBOT_SIP__TRANSFER_NOTIFY_TIMEOUT_S="20",
        VOICEBOT_AGENT__TRANSFER_FAILED_MESSAGE=FAILED,
        VOICEBOT_ENGINES__STT_MODEL="tiny.en",
        VOICEBOT_ENGINES__TTS="espeak",
        VOICEBOT_WEBHOOKS__URLS=json.dumps([receiver.url()]),
        VOICEBOT_WEBHOOKS__SECRET=SECRET,
    ) as gw:
        yield gw, sip_port, events, workdir


def _sipp_call(xfer_gw: tuple[Gateway, int, Path, Path], name: str, audio16k: np.ndarray,
               after_refer: str, media_port: int) -> str:  # fmt: skip
    """One SIPp call whose REFER must carry the context; returns the bot's call id."""
    gw, sip_port, _, workdir = xfer_gw
    sip_call_id = f"{name}-{uuid.uuid4().hex[:8]}@127.0.0.1"
    call_id = f"sip-{sip_call_id}"
    wav = workdir / f"{name}.wav"
    write_wav(wav, resample_whole(audio16k, SR, 8000), 8000, encoding="ulaw")
    expected = refer_to("sip:queue@localhost", call_id, HEADERS, uui_purpose="voicebot-call-id")
    text = (siptools.SIP_DIR / "uac_transfer_context.xml").read_text()
    for key, value in {"WAV": str(wav), "CODEC_PT": "0", "AFTER_REFER": after_refer,
                       "REFER_TO_RE": "Refer-To: *" + _ere(expected)}.items():  # fmt: skip
        text = text.replace(f"@{key}@", value)
    scenario = workdir / f"filled-{name}.xml"
    scenario.write_text(text)
    # siptools.sipp's arguments, plus -cid_str: the Call-ID is ours, so the call id is known.
    args = [
        siptools.SIPP, f"127.0.0.1:{sip_port}", "-sf", str(scenario), "-i", "127.0.0.1",
        "-mi", "127.0.0.1", "-mp", str(media_port), "-m", "1", "-l", "1", "-timeout", "90s",
        "-timeout_error", "-nostdin", "-trace_err", "-cid_str", sip_call_id,
    ]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + gw.log()[-3000:]
    return call_id


def _events(events_log: Path, call_id: str) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in events_log.read_text().splitlines()]
    return [e for e in out if e["call_id"] == call_id and e["type"] != "vad"]


def _record(gw: Gateway, call_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        rec = httpx.get(f"{gw.http}/v1/calls/{call_id}").json()
        if rec.get("end_reason"):
            return rec
        assert time.monotonic() < deadline, rec
        time.sleep(0.3)


def _webhook(receiver: Receiver, call_id: str, kind: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        for got in list(receiver.received):
            if got.call_id == call_id and got.type == kind:
                return json.loads(got.body)["data"]
        assert time.monotonic() < deadline, [(r.type, r.call_id) for r in receiver.received]
        time.sleep(0.2)


@pytestmark_sip
def test_sip_transfer_accepted_and_reported_carries_the_context(
    xfer_gw: tuple[Gateway, int, Path, Path], receiver: Receiver, voice: Any
) -> None:
    gw, _, events_log, _ = xfer_gw
    audio = place(6.0, (0.3, voice.synthesize_sync(ASK)))
    after = (_ACCEPT + _notify(2, "active;expires=60", "SIP/2.0 100 Trying")
             + '  <pause milliseconds="500"/>\n'
             + _notify(3, "terminated;reason=noresource", "SIP/2.0 200 OK")
             + _BOT_HANGS_UP)  # fmt: skip
    # The scenario fails unless the REFER's Refer-To is exactly the expected one: the hex
    # call id in User-to-User and both configured X- headers, escaped.
    call_id = _sipp_call(xfer_gw, "xfer-ok", audio, after, media_port=17700)
    events = _events(events_log, call_id)
    kinds = [e["type"] for e in events]
    moved = next(e for e in events if e["type"] == "transferred")
    assert (moved["status"], moved["reason"], moved["confirmed"]) == (200, "OK", True)
    assert kinds.index("transferred") < kinds.index("call_ended")
    assert "transfer_failed" not in kinds and events[-1]["reason"] == "transferred"
    rec = _record(gw, call_id)
    assert rec["end_reason"] == "transferred" and rec["transfer_target"] == "sip:queue@localhost"
    assert rec["summary"]["transfers"] == [
        {"target": "sip:queue@localhost", "outcome": "transferred", "status": 200,
         "reason": "OK", "t": moved["t"], "confirmed": True},
    ]  # fmt: skip
    hook = _webhook(receiver, call_id, "call.transferred")
    assert hook["target"] == "sip:queue@localhost" and hook["status"] == 200
    said = [(t["speaker"], t["text"]) for t in hook["transcript"]]
    assert said[0][0] == "user" and "person" in said[0][1].lower()
    assert said[-1] == ("bot", "Of course. I am transferring you to a colleague now. Please hold.")
    assert hook["summary"]["method"] == "extractive"
    assert hook["summary"]["caller_last"] == [said[0][1]]
    assert hook["summary"]["text"] == f'Caller said: "{said[0][1]}"'
    # The same turns as the record's.
    assert [(t["speaker"], t["heard"]) for t in rec["turns"]] == said


FAILURES = {
    "refer-603": _refuse(603, "Decline") + _talk_then_hang_up(20_000, 2),
    "notify-486": (_ACCEPT + _notify(2, "active;expires=60", "SIP/2.0 100 Trying")
                   + _notify(3, "terminated;reason=noresource", "SIP/2.0 486 Busy Here")
                   + _talk_then_hang_up(20_000, 4)),
}  # fmt: skip


@pytestmark_sip
@pytest.mark.parametrize("how", list(FAILURES))
def test_sip_transfer_failed_the_bot_says_so_and_goes_on(
    xfer_gw: tuple[Gateway, int, Path, Path], receiver: Receiver, voice: Any, how: str
) -> None:
    gw, _, events_log, _ = xfer_gw
    # The caller asks for a person, then (after the failure sentence) asks a question.
    audio = place(40.0, (0.3, voice.synthesize_sync(ASK)), (18.0, voice.synthesize_sync(QUESTION)))
    port = {"refer-603": 17710, "notify-486": 17720}[how]
    call_id = _sipp_call(xfer_gw, f"xfer-{how}", audio, FAILURES[how], media_port=port)
    events = _events(events_log, call_id)
    kinds = [e["type"] for e in events]
    status, reason = (603, "Decline") if how == "refer-603" else (486, "Busy Here")
    failed = next(e for e in events if e["type"] == "transfer_failed")
    assert (failed["target"], failed["status"], failed["reason"]) == (
        "sip:queue@localhost", status, reason)  # fmt: skip
    assert "transferred" not in kinds
    # The bot says the failure sentence after it, then answers the next question.
    after = events[kinds.index("transfer_failed"):]
    said = [e["text"] for e in after if e["type"] == "bot_text"]
    assert said and " ".join(said).startswith("Sorry, I couldn't transfer you.")
    heard = [e["text"].lower() for e in after if e["type"] == "transcript"]
    assert any("balance" in text for text in heard), after
    assert any("forty two dollars" in text for text in said), said
    assert events[-1]["type"] == "call_ended" and events[-1]["reason"] == "caller_hangup"
    rec = _record(gw, call_id)
    assert rec["end_reason"] == "caller_hangup" and rec["transfer_target"] is None
    assert rec["summary"]["transfers"] == [
        {"target": "sip:queue@localhost", "outcome": "failed", "status": status,
         "reason": reason, "t": failed["t"]},
    ]  # fmt: skip
    bot_turns = [t["text"] for t in rec["turns"] if t["speaker"] == "bot"]
    assert FAILED in bot_turns and any("forty two dollars" in t for t in bot_turns)
    hook = _webhook(receiver, call_id, "call.transfer_failed")
    assert (hook["status"], hook["reason"], hook["outcome"]) == (status, reason, "failed")
    assert hook["transcript"][0]["speaker"] == "user" and hook["summary"]["caller_last"]


# -- media streams: announced by the webhook ------------------------------------------------
def test_twilio_stream_transfer_is_announced_by_the_webhook(
    tmp_path: Path, receiver: Receiver, voice: Any
) -> None:
    params = {"customer_id": "c-42", "from": "+15550001111", "to": "+15550002222"}
    with gateway(
        tmp_path,
        VOICEBOT_ENGINES__STT_MODEL="tiny.en",
        VOICEBOT_ENGINES__TTS="espeak",
        VOICEBOT_WEBHOOKS__URLS=json.dumps([receiver.url("/twilio")]),
        VOICEBOT_WEBHOOKS__SECRET=SECRET,
    ) as gw:
        audio = place(12.0, (0.5, voice.synthesize_sync(ASK)))
        got = asyncio.run(stream_clients.twilio_call(
            f"ws://127.0.0.1:{gw.port}/v1/streams/twilio", resample_whole(audio, SR, 8000),
            params=params,
        ))  # fmt: skip
        hook: dict[str, Any] | None = None
        deadline = time.monotonic() + 20
        while hook is None:
            hook = next((json.loads(r.body)["data"] for r in list(receiver.received)
                         if r.path == "/twilio" and r.type == "call.transferred"),
                        None)  # fmt: skip
            assert hook is not None or time.monotonic() < deadline, receiver.received
            time.sleep(0.2)
        call_id = hook["call_id"]
        assert call_id.startswith("twilio-")
        rec = _record(gw, call_id)
    # The bot said it would transfer, and ended its side: the customer's system, told by
    # the webhook, moves the call with the provider's API (no REFER on a media stream).
    assert rec["end_reason"] == "transferred" and rec["info"]["callSid"] == got.call_ref
    assert hook["target"] == "sip:queue@localhost" and hook["status"] is None
    assert hook["outcome"] == "transferred" and hook["confirmed"] is False
    assert "person" in hook["summary"]["caller_last"][0].lower()
    assert hook["transcript"][-1]["text"].startswith("Of course. I am transferring you")
    # The call's variables (the stream's custom parameters), as in the record.
    assert hook["variables"] == rec["variables"] and rec["variables"]["customer_id"] == "c-42"
