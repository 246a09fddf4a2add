"""Call variables (calls/variables.py, agent/templates.py): what the caller's side knows of
a call reaches its record, its webhooks and what the bot says.

Unit tests of the naming rule, the sanitising, the one-pass rendering and its unknown-name
log; the records migration 0002 on a database left at 0001 (SQLite and PostgreSQL); the
AudioSocket lookup against a real HTTP server; and live calls through a real `voicebot
serve`: a SIPp caller whose INVITE carries `X-Customer-Id: C-4711` and a Twilio-protocol
client with `customParameters`, each greeted and answered by the scripted engine with
`{{customer_id}}` filled in, the variables in `GET /v1/calls/{id}` and in the signed
`call.started` / `call.ended` webhooks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from tests import siptools, stream_clients
from tests.audiogen import place
from tests.gateway_server import Gateway, gateway
from tests.servers import free_port, uvicorn_server
from tests.webhook_receiver import SECRET, Receiver
from voicebot.agent.templates import MAX_LOGGED, CallTemplates, render
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import write_wav
from voicebot.calls.records.database import MIGRATIONS, create_engine, migrate
from voicebot.calls.records.queries import get_call, list_calls
from voicebot.calls.records.recorder import CallRecorder
from voicebot.calls.records.writes import RecordWrite
from voicebot.calls.variables import (
    MAX_VALUE,
    MAX_VARIABLES,
    call_variables,
    merge_variables,
    select_headers,
    variable_name,
)
from voicebot.config import Settings
from voicebot.models.llm.scripted import ScriptedLanguageModel
from voicebot.telephony.audiosocket_lookup import lookup_url, lookup_variables

SR = 16000
TOKEN = "v4riables"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- names and values -----------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "name"), [
    ("X-Customer-Id", "customer_id"),
    ("x-customer-id", "customer_id"),
    ("customer_id", "customer_id"),
    ("customerId", "customer_id"),
    ("CustomerID", "customer_id"),
    ("P-Asserted-Identity", "p_asserted_identity"),
    ("Diversion", "diversion"),
    ("callSid", "call_sid"),
    ("  Account.Number  ", "account_number"),
    ("Näme", "name"),
    ("x_ray", "x_ray"),  # only a header's "X-" is taken off
    ("X-", ""),
    ("{{secret}}", "secret"),
    ("a" * 100, "a" * 64),
])  # fmt: skip
def test_names_follow_one_rule(raw: str, name: str) -> None:
    assert variable_name(raw) == name


def test_values_are_bounded_clean_text() -> None:
    got = call_variables({
        "X-Customer-Id": "  C-4711 ", "bell": "a\x07b\x00c", "lines": "one\r\ntwo\tthree",
        "long": "x" * 5000, "n": 42, "f": 1.5, "yes": True, "nested": {"a": 1},
        "list": [1, 2], "none": None, "": "no name", "---": "no name either",
        "sep": "a\u2028b",
    })  # fmt: skip
    assert got == {
        "customer_id": "C-4711", "bell": "abc", "lines": "one  two three",
        "long": "x" * MAX_VALUE, "n": "42", "f": "1.5", "yes": "true", "sep": "ab",
    }  # fmt: skip
    for value in got.values():
        assert all(ch.isprintable() for ch in value)


def test_at_most_n_variables_and_the_first_value_of_a_name_wins() -> None:
    many = call_variables({f"v{i}": str(i) for i in range(200)})
    assert len(many) == MAX_VARIABLES and many["v0"] == "0"
    assert call_variables([("X-Customer-Id", "first"), ("customer_id", "second")]) == {
        "customer_id": "first"
    }
    assert merge_variables({"a": "1"}, {"a": "2", "b": "3"}) == {"a": "1", "b": "3"}
    assert call_variables(None) == {}


def test_select_headers_takes_the_configured_ones_in_order() -> None:
    headers = [
        ("Via", "SIP/2.0/UDP 1.2.3.4"), ("X-Customer-Id", "C-1"), ("Diversion", "<sip:a>"),
        ("Subject", "hi"), ("Diversion", "<sip:b>"), ("X-Tag", "t1"), ("X-Tag", "t2"),
        ("P-Asserted-Identity", "<sip:+1555@pbx>"),
    ]  # fmt: skip
    wanted = ["P-Asserted-Identity", "X-*", "diversion", "X-Customer-Id", ""]
    assert select_headers(headers, wanted) == [
        ("P-Asserted-Identity", "<sip:+1555@pbx>"), ("X-Customer-Id", "C-1"),
        ("X-Tag", "t1, t2"), ("Diversion", "<sip:a>, <sip:b>"),
    ]  # fmt: skip
    assert select_headers(headers, []) == []
    default = Settings().sip.variable_headers
    assert call_variables(select_headers(headers, default)) == {
        "customer_id": "C-1", "tag": "t1, t2", "p_asserted_identity": "<sip:+1555@pbx>",
        "diversion": "<sip:a>, <sip:b>",
    }  # fmt: skip


# -- rendering ------------------------------------------------------------------------------
def test_render_fills_placeholders_in_one_pass() -> None:
    variables = {"customer_id": "C-4711", "note": "{{secret}}", "secret": "S3CRET"}
    assert render("Hello {{customer_id}}!", variables) == "Hello C-4711!"
    assert render("{{ Customer-Id }}/{{CUSTOMER_ID}}", variables) == "C-4711/C-4711"
    # A value is data: a caller's template syntax is not expanded into another variable.
    assert render("Note: {{note}}", variables) == "Note: {{secret}}"
    unknown: set[str] = set()
    assert render("a{{missing}}b{{ other.one }}c", variables, unknown) == "abc"
    assert unknown == {"missing", "other_one"}
    # Not placeholders: left as written.
    for literal in ("{single}", "{{}}", "{{two words}}", "{{" + "x" * 65 + "}}", "}} {{"):
        assert render(literal, variables) == literal


def test_unknown_placeholders_are_logged_once_per_name_and_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    templates = CallTemplates("call-1", {"known": "yes"})
    with caplog.at_level(logging.INFO, logger="voicebot.agent"):
        assert templates.render("{{known}} {{nope}}") == "yes "
        assert templates.render("{{nope}} again") == " again"
        for i in range(50):
            templates.render(f"{{{{u{i}}}}}")
    lines = [r.getMessage() for r in caplog.records if "no call variable" in r.getMessage()]
    assert sum("nope" in line for line in lines) == 1
    named = {name.strip() for line in lines for name in line.split("variable ")[1]
             .split(":")[0].split(",")}  # fmt: skip
    assert len(named) == MAX_LOGGED and len(lines) <= MAX_LOGGED


def test_scripted_replies_are_rendered_with_the_calls_renderer() -> None:
    engine = ScriptedLanguageModel({
        "fallback": "Sorry {{customer_id}}.",
        "intents": [{"name": "b", "keywords": ["balance"],
                     "reply": "Customer {{customer_id}}, your note says {{note}}."}],
    })  # fmt: skip
    templates = CallTemplates("c", {"customer_id": "C-4711", "note": "{{customer_id}}"})

    async def reply(text: str, rendered: bool) -> str:
        from voicebot.models.base import ChatMessage, TextDelta

        messages = [ChatMessage("user", text)]
        stream = (engine.stream_rendered(messages, templates.render) if rendered
                  else engine.stream(messages))  # fmt: skip
        return "".join([p.text async for p in stream if isinstance(p, TextDelta)])

    assert asyncio.run(reply("my balance", True)) == (
        "Customer C-4711, your note says {{customer_id}}."
    )
    assert asyncio.run(reply("what", True)) == "Sorry C-4711."
    assert asyncio.run(reply("my balance", False)).startswith("Customer {{customer_id}}")


def test_front_desk_profile_answers_are_rendered() -> None:
    from voicebot.models.base import ChatMessage, TextDelta
    from voicebot.models.llm.business_profile import BusinessProfile
    from voicebot.models.llm.frontdesk import FrontDeskLanguageModel

    profile = BusinessProfile.from_dict({
        "business": "Desk", "address": "1 Road", "phone": "555",
        "fallback": "Sorry {{customer_id}}, I cannot help with that.",
        "topics": [{"name": "parking", "keywords": ["parking"],
                    "reply": "Parking for account {{customer_id}} is free."}],
    })  # fmt: skip
    desk = FrontDeskLanguageModel(profile, None)
    templates = CallTemplates("c", {"customer_id": "C-4711"})

    async def reply(text: str) -> str:
        stream = desk.stream_rendered([ChatMessage("user", text)], templates.render)
        return "".join([p.text async for p in stream if isinstance(p, TextDelta)])

    assert asyncio.run(reply("parking please")) == "Parking for account C-4711 is free."
    assert asyncio.run(reply("tell me a joke")) == "Sorry C-4711, I cannot help with that."


# -- the session: greeting, system prompt, overrides ---------------------------------------
def test_session_renders_greeting_system_prompt_and_overrides() -> None:
    from tests.engines import ScriptedSTT
    from voicebot.agent.config import AgentConfig
    from voicebot.agent.session import CallSession, CallSetup
    from voicebot.models.base import Engines

    class Sink:
        def write(self, frame: np.ndarray) -> None: ...

        def clear(self) -> int:
            return 0

    class SilentTTS:
        name = "silent"

        async def synthesize(self, text: str) -> np.ndarray:
            return np.zeros(320, np.int16)

    def make_engines() -> Engines:
        return Engines(ScriptedSTT(), ScriptedLanguageModel({}), SilentTTS())

    config = AgentConfig(greeting="Hi {{name}}.", system_prompt="Caller {{name}} ({{x}}).",
                         transfer_failed_message="Sorry {{name}}, no agent is free.")  # fmt: skip
    variables = {"name": "Ann"}
    session = CallSession(CallSetup("c", make_engines(), Sink(), config=config,
                                    variables=variables))  # fmt: skip
    assert session.config.greeting == "Hi Ann." and session.config.system_prompt == "Caller Ann ()."
    assert session.config.transfer_failed_message == "Sorry Ann, no agent is free."
    assert config.greeting == "Hi {{name}}."  # the shared settings are not touched
    override = CallSession(CallSetup(
        "d", make_engines(), Sink(), config=config, variables=variables,
        prompt_overrides={"greeting": "Calling for {{name}}.", "system_prompt": "Outbound."},
    ))  # fmt: skip
    assert override.config.greeting == "Calling for Ann."
    assert override.config.system_prompt == "Outbound."
    silent = CallSession(CallSetup("e", make_engines(), Sink(), config=config,
                                   prompt_overrides={"greeting": ""}))  # fmt: skip
    assert silent.config.greeting == ""


# -- the record and its webhooks ------------------------------------------------------------
def test_recorder_keeps_variables_in_the_row_and_the_webhooks() -> None:
    writes: list[RecordWrite] = []
    recorder = CallRecorder("sip-x", "sip", "gw", writes.append, ["http://127.0.0.1:9/h"])
    recorder.opened({"from": "a", "to": "b"}, {"customer_id": "C-4711"})
    recorder.finished("caller_hangup")
    row = next(w.row for w in writes if w.table == "calls" and w.op == "insert")
    assert row["variables"] == {"customer_id": "C-4711"}
    hooks = {w.row["type"]: w.row["payload"] for w in writes if w.table == "webhook_outbox"}
    assert hooks["call.started"]["data"]["variables"] == {"customer_id": "C-4711"}
    assert hooks["call.ended"]["data"]["variables"] == {"customer_id": "C-4711"}


def _upgrade_to(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def test_migration_0002_upgrades_an_existing_0001_database(database_url: str) -> None:
    async def main() -> None:
        engine = create_engine(Settings(database_url=database_url).database)
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade_to, "0001")
            columns = await connection.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("calls")}
            )
            assert "variables" not in columns
            await connection.execute(text(
                "INSERT INTO calls (id, gateway, transport, direction, info, started_at, dtmf,"
                " turns) VALUES ('old-1', 'gw', 'sip', 'inbound', '{}', :t, '', 0)"
            ), {"t": datetime(2026, 1, 1, tzinfo=UTC)})  # fmt: skip
        await migrate(engine)
        await migrate(engine)  # at head: a no-op
        async with engine.connect() as connection:
            version = await connection.execute(text("SELECT version_num FROM alembic_version"))
            assert version.scalar_one() == "0003"  # and on to the newest
        old = await get_call(engine, "old-1")
        assert old is not None and old["variables"] == {}
        writes: list[RecordWrite] = []
        recorder = CallRecorder("new-1", "sip", "gw", writes.append, [])
        recorder.opened({}, {"customer_id": "C-4711"})
        from voicebot.calls.records.writer import RecordWriter

        writer = RecordWriter(engine)
        writer.start()
        for write in writes:
            writer.put(write)
        assert await writer.flush(20)
        await writer.close()
        new = await get_call(engine, "new-1")
        assert new is not None and new["variables"] == {"customer_id": "C-4711"}
        listed, _ = await list_calls(engine)
        assert {c["id"]: c["variables"] for c in listed} == {
            "new-1": {"customer_id": "C-4711"}, "old-1": {},
        }  # fmt: skip
        await engine.dispose()

    asyncio.run(main())


# -- the AudioSocket lookup -----------------------------------------------------------------
def test_audiosocket_lookup(caplog: pytest.LogCaptureFixture) -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    app = FastAPI()

    @app.get("/lookup/{call_uuid}")
    async def by_path(call_uuid: str) -> JSONResponse:
        return JSONResponse({"X-Customer-Id": f"C-{call_uuid[:4]}", "tier": 2, "deep": {"a": 1}})

    @app.get("/query")
    async def by_query(uuid: str) -> JSONResponse:
        return JSONResponse({"uuid_seen": uuid})

    @app.get("/slow")
    async def slow() -> JSONResponse:
        await asyncio.sleep(3)
        return JSONResponse({"late": "yes"})

    @app.get("/list")
    async def not_object() -> JSONResponse:
        return JSONResponse([1, 2])

    @app.get("/broken")
    async def broken() -> Response:
        return Response("no", status_code=500)

    call_uuid = "1234abcd-0000-0000-0000-000000000000"
    assert lookup_url("http://h/x?a=1", call_uuid) == f"http://h/x?a=1&uuid={call_uuid}"
    with uvicorn_server(app) as base:

        def look(path: str, timeout_s: float = 2.0) -> dict[str, str]:
            return asyncio.run(lookup_variables(base + path, call_uuid, timeout_s, call_id="a-1"))

        assert look("/lookup/{uuid}") == {"customer_id": "C-1234", "tier": "2"}
        assert look("/query") == {"uuid_seen": call_uuid}
        with caplog.at_level(logging.WARNING, logger="voicebot.telephony.audiosocket"):
            started = time.monotonic()
            assert look("/slow", 0.5) == {}
            assert time.monotonic() - started < 2.0
            assert look("/list") == {} and look("/broken") == {}
            assert asyncio.run(lookup_variables(f"http://127.0.0.1:{free_port()}/", call_uuid,
                                                1.0)) == {}  # fmt: skip
        failures = [r for r in caplog.records if "variables lookup failed" in r.getMessage()]
        assert len(failures) == 4


# -- live calls -----------------------------------------------------------------------------
SCRIPT = """
fallback: "Sorry {{customer_id}}, could you say that again?"
intents:
  - name: balance
    keywords: ["balance", "account"]
    reply: "Customer {{customer_id}}, your balance is forty two dollars. Your note says {{note}}."
"""


@pytest.fixture(scope="module")
def receiver() -> Receiver:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def lookup() -> str:
    """The operator's lookup service for AudioSocket calls: variables by UUID; a UUID
    starting with 0000 gets no answer in time."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/calls/{call_uuid}/variables")
    async def by_uuid(call_uuid: str) -> JSONResponse:
        if call_uuid.startswith("0000"):
            await asyncio.sleep(3)
        return JSONResponse({"customerId": f"A-{call_uuid[:4]}", "lang": "en"})

    with uvicorn_server(app) as base:
        yield f"{base}/calls/{{uuid}}/variables"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver, lookup: str):  # type: ignore[no-untyped-def]
    workdir = tmp_path_factory.mktemp("variables")
    script = workdir / "script.yaml"
    script.write_text(SCRIPT)
    sip_port = free_port()
    audiosocket_port = free_port()
    with gateway(
        workdir,
        VOICEBOT_AUDIOSOCKET_PORT=str(audiosocket_port),
        VOICEBOT_AUDIOSOCKET__LOOKUP_URL=lookup,
        VOICEBOT_AUDIOSOCKET__LOOKUP_TIMEOUT_S="0.5",
        VOICEBOT_SIP_PORT=str(sip_port),
        VOICEBOT_SIP__RTP_PORT_MIN="22400",
        VOICEBOT_SIP__RTP_PORT_MAX="22599",
        VOICEBOT_API_TOKEN=TOKEN,
        VOICEBOT_ENGINES__STT_MODEL="tiny.en",
        VOICEBOT_ENGINES__TTS="espeak",
        VOICEBOT_ENGINES__LLM_SCRIPT=str(script),
        VOICEBOT_AGENT__GREETING="Hello customer {{customer_id}}.",
        VOICEBOT_WEBHOOKS__URLS=json.dumps([receiver.url()]),
        VOICEBOT_WEBHOOKS__SECRET=SECRET,
    ) as gw:
        gw.audiosocket_port = audiosocket_port  # type: ignore[attr-defined]
        yield gw, sip_port, workdir


def ended_record(gw: Gateway, transport: str, known: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        listed = httpx.get(f"{gw.http}/v1/calls", params={"transport": transport},
                           headers=AUTH).json()["calls"]  # fmt: skip
        new = [c for c in listed if c["id"] not in known and c["ended_at"]]
        if new:
            return httpx.get(f"{gw.http}/v1/calls/{new[0]['id']}", headers=AUTH).json()
        assert time.monotonic() < deadline, gw.log()[-3000:]
        time.sleep(0.3)


def known_ids(gw: Gateway) -> set[str]:
    listed = httpx.get(f"{gw.http}/v1/calls", headers=AUTH).json()["calls"]
    return {c["id"] for c in listed}


def webhooks_of(receiver: Receiver, call_id: str) -> dict[str, dict[str, Any]]:
    """The verified webhooks of one call by type, once call.ended is in."""
    deadline = time.monotonic() + 20
    while True:
        got = {r.type: json.loads(r.body) for r in list(receiver.received) if r.call_id == call_id}
        if "call.ended" in got:
            return got
        assert time.monotonic() < deadline, f"no call.ended webhook: {sorted(got)}"
        time.sleep(0.3)


def bot_texts(record: dict[str, Any]) -> list[str]:
    return [e["text"] for e in record["events"] if e["type"] == "bot_text"]


@pytest.mark.skipif(not Path(siptools.SIPP).exists(), reason="sipp not installed")
def test_sip_invite_headers_reach_record_webhooks_and_the_bots_words(
    live, receiver: Receiver, voice
) -> None:  # type: ignore[no-untyped-def]
    gw, sip_port, workdir = live
    known = known_ids(gw)
    question = voice.synthesize_sync("What is the balance on my account?")
    wav = workdir / "caller.wav"
    write_wav(wav, resample_whole(place(6.5, (3.5, question)), SR, 8000), 8000, encoding="ulaw")
    result = siptools.sipp(
        "uac_variables.xml", sip_port, media_port=17800 + 2 * (free_port() % 100),
        log_dir=workdir, fill={"WAV": str(wav), "HOLD_MS": "16000"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + gw.log()[-3000:]
    record = ended_record(gw, "sip", known)
    variables = record["variables"]
    assert variables["customer_id"] == "C-4711" and variables["note"] == "{{secret}}"
    assert variables["p_asserted_identity"] == '"Alice" <sip:+15551230001@pbx.example.com>'
    assert variables["diversion"].count("reason=") == 2
    assert "subject" not in variables and "via" not in variables
    said = bot_texts(record)
    assert said and said[0] == "Hello customer C-4711.", said
    spoken = " ".join(said)
    assert "Customer C-4711, your balance" in spoken, (said, record["turns"])
    # The caller's "{{secret}}" is spoken as written, not expanded into X-Secret's value.
    assert "{{secret}}" in spoken and "S3CRET" not in spoken
    hooks = webhooks_of(receiver, record["id"])
    assert hooks["call.started"]["data"]["variables"] == variables
    assert hooks["call.ended"]["data"]["variables"] == variables


def test_twilio_custom_parameters_reach_record_webhooks_and_the_bots_words(
    live, receiver: Receiver, voice
) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = live
    known = known_ids(gw)
    question = voice.synthesize_sync("What is the balance on my account?")
    audio = place(14.0, (3.5, question))
    params = {"customerId": "T-99", "note": "a\nb", "from": "+15550001111", "token": TOKEN}
    got = asyncio.run(stream_clients.twilio_call(
        f"ws://127.0.0.1:{gw.port}/v1/streams/twilio", resample_whole(audio, SR, 8000),
        params=params,
    ))  # fmt: skip
    assert got.audio, got.close_reason
    record = ended_record(gw, "twilio", known)
    assert record["variables"] == {"customer_id": "T-99", "note": "a b", "from": "+15550001111"}
    assert TOKEN not in json.dumps(record)  # the token parameter is never recorded
    said = bot_texts(record)
    assert said and said[0] == "Hello customer T-99.", said
    assert "Customer T-99, your balance" in " ".join(said), (said, record["turns"])
    hooks = webhooks_of(receiver, record["id"])
    assert hooks["call.started"]["data"]["variables"] == record["variables"]
    assert hooks["call.ended"]["data"]["variables"] == record["variables"]


def test_audiosocket_lookup_by_uuid_gives_the_call_its_variables(
    live, receiver: Receiver
) -> None:  # type: ignore[no-untyped-def]
    import uuid

    from tests.pbx_clients import SLIN8, audiosocket_call

    gw, _, _ = live
    port = gw.audiosocket_port
    known = known_ids(gw)
    call_uuid = uuid.UUID("4711abcd-0000-4000-8000-000000000001")
    got = asyncio.run(audiosocket_call(port, np.zeros(4 * SR, np.int16), kind=SLIN8,
                                       call_uuid=call_uuid))  # fmt: skip
    assert got.tags == {SLIN8}
    record = ended_record(gw, "audiosocket", known)
    assert record["info"]["uuid"] == str(call_uuid)
    assert record["variables"] == {"customer_id": "A-4711", "lang": "en"}
    assert bot_texts(record)[:1] == ["Hello customer A-4711."]
    hooks = webhooks_of(receiver, record["id"])
    assert hooks["call.started"]["data"]["variables"] == record["variables"]
    # A lookup that does not answer in time: one log line, and the call goes on without.
    known.add(record["id"])
    slow = uuid.UUID("0000abcd-0000-4000-8000-000000000002")
    asyncio.run(audiosocket_call(port, np.zeros(4 * SR, np.int16), kind=SLIN8, call_uuid=slow))
    record = ended_record(gw, "audiosocket", known)
    assert record["info"]["uuid"] == str(slow) and record["variables"] == {}
    assert bot_texts(record)[:1] == ["Hello customer ."]
    failed = [line for line in gw.log().splitlines() if "variables lookup failed" in line]
    assert len(failed) == 1 and str(slow) in failed[0], failed
