"""The call inspector page (`GET /calls`) in a real browser over a real gateway's records.

One WebSocket call with a question, the answer, a barge-in and a second question makes the
record (turns, events, stereo recording). Headless Debian chromium then opens /calls and the
test reads the page as a person would: the call is in the list; selected, its timeline puts
each turn's bar at its start on the time axis (geometry from the rendered boxes, the scale
from the axis ticks), caller bars in the caller lane and bot bars in the bot lane; the
bubbles say what the API says was said; a click at a turn's start plays the recording from
there and the playhead follows. The screenshot is checked too: the bars' colours are where
the bars are. With `VOICEBOT_API_TOKEN` set the page asks for the token, or takes `?token=`; a
live call is listed while it runs and gets its recording when it ends.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from tests import gateway_client
from tests.audiogen import place
from tests.browser import ARTIFACTS, CHROMIUM
from tests.gateway_server import Gateway, gateway
from voicebot.models.tts.piper import PiperTextToSpeech

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--autoplay-policy=no-user-gesture-required"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 900}
PX_TOLERANCE = 3.0


# -- helpers ------------------------------------------------------------------------------------
def make_call(gw: Gateway, audio: np.ndarray, headers: dict[str, str] | None = None) -> str:
    got = asyncio.run(gateway_client.call(gw.ws, audio, linger_s=0.5, headers=headers))
    return got.of("call_started")[0]["call_id"]


def closed_record(gw: Gateway, call_id: str, headers: dict[str, str] | None = None,
                  timeout_s: float = 15.0) -> dict[str, Any]:  # fmt: skip
    """The call's record once it is closed and its recording written (the writer batches)."""
    url = f"{gw.http}/v1/calls/{call_id}"
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(url, headers=headers, timeout=5)
        if response.status_code == 200:
            record = response.json()
            if record["ended_at"] and record["recording"] and record["turns"]:
                return record
        assert time.monotonic() < deadline, f"record not closed: {response.text[:500]}"
        time.sleep(0.3)


def decode_png(data: bytes) -> np.ndarray:
    """8-bit RGB(A) non-interlaced PNG (what chromium's screenshots are) -> H x W x 3."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + stride)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:]
        if kind == 0:
            row = line.copy()
        elif kind == 2:
            row = line + prev
        elif kind == 1:  # Sub: a running sum per channel
            row = np.cumsum(line.reshape(width, channels), axis=0, dtype=np.uint64)
            row = (row & 255).astype(np.uint8).reshape(stride)
        else:  # Average, Paeth: each byte depends on the one to its left
            cur, up = bytearray(line.tobytes()), prev.tobytes()
            for x in range(stride):
                a = cur[x - channels] if x >= channels else 0
                b = up[x]
                if kind == 3:
                    cur[x] = (cur[x] + (a + b) // 2) & 255
                    continue
                c = up[x - channels] if x >= channels else 0
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (cur[x] + pred) & 255
            row = np.frombuffer(bytes(cur), np.uint8)
        out[y] = row
        prev = row
    return out.reshape(height, width, channels)[:, :, :3]


def rgb(css: str) -> tuple[int, int, int]:
    """'rgb(45, 108, 223)' -> (45, 108, 223)."""
    inside = css[css.index("(") + 1 : css.index(")")]
    r, g, b = (int(float(v)) for v in inside.split(",")[:3])
    return r, g, b


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).bounding_box()
    assert found is not None, f"{selector} not laid out"
    return found


def open_call(page: Any, call_id: str) -> None:
    item = page.locator(f'.call-item[data-call-id="{call_id}"]')
    item.wait_for(timeout=10_000)
    item.click()
    page.wait_for_selector(f'#call-view[data-call-id="{call_id}"]', timeout=10_000)
    # The recording's length is known: the timeline's last layout is done (same handler).
    page.wait_for_function("document.body.dataset.audio === 'ready'", timeout=10_000)


def axis_scale(page: Any) -> tuple[float, float]:
    """x of t = 0 (page px) and px per second, read from the rendered axis ticks."""
    ticks = page.eval_on_selector_all(
        "#axis .tick",
        "ts => ts.map(t => [Number(t.dataset.t), t.getBoundingClientRect().left])",
    )
    assert len(ticks) >= 3, ticks
    (t0, x0), (t1, x1) = ticks[0], ticks[-1]
    assert t0 == 0
    return x0, (x1 - x0) / t1


# -- the call and its page -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, voice: PiperTextToSpeech):  # type: ignore[no-untyped-def]
    question = voice.synthesize_sync("What is the balance on my account?")
    # Barges in halfway through the answer (one breath: see test_gateway) to ask for a person.
    interruption = voice.synthesize_sync("I want to speak to somebody else about my order.")
    audio = place(13.0, (0.5, question), (4.2, interruption))
    tmp = tmp_path_factory.mktemp("inspector")
    with gateway(tmp) as gw:
        call_id = make_call(gw, audio)
        yield gw, closed_record(gw, call_id), tmp


def test_the_inspector_shows_a_real_call(recorded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    gw, record, _ = recorded
    turns = record["turns"]
    assert {t["speaker"] for t in turns} == {"user", "bot"}, turns
    page_html = httpx.get(f"{gw.http}/calls", timeout=5)
    assert page_html.status_code == 200 and "text/html" in page_html.headers["content-type"]
    assert 'href="/calls"' in httpx.get(gw.http, timeout=5).text  # linked from the call page

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(f"{gw.http}/calls")
            item = page.locator(f'.call-item[data-call-id="{record["id"]}"]')
            item.wait_for(timeout=10_000)
            listed = item.inner_text()
            assert "ws" in listed.split() and str(len(turns)) in listed.split(), listed
            assert record["end_reason"].replace("_", " ") in listed
            open_call(page, record["id"])
            check_header(page, record)
            check_timeline(page, record)
            check_seek_and_playhead(page, turns)
            shot = tmp_path / "call-inspector.png"
            page.evaluate("document.getElementById('player').pause()")
            page.mouse.move(0, 0)
            page.screenshot(path=str(shot))
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(shot, ARTIFACTS / "call-inspector.png")
            check_screenshot(page, shot.read_bytes(), turns)
            check_search_and_filters(page, record)
            check_dtmf_and_error_markers(page, record)
            assert not errors, errors
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "call-inspector-failed.png"))
            raise
        finally:
            browser.close()


def check_header(page: Any, record: dict[str, Any]) -> None:
    assert page.inner_text("#call-id") == record["id"]
    assert record["end_reason"].replace("_", " ") in page.inner_text("#call-end-reason")
    if record["transfer_target"]:
        assert record["transfer_target"] in page.inner_text("#call-transfer")
    assert page.locator("#player").get_attribute("src").startswith(record["recording"])


def check_timeline(page: Any, record: dict[str, Any]) -> None:
    lanes = {"user": box(page, "#lane-user"), "bot": box(page, "#lane-bot")}
    assert lanes["user"]["y"] + lanes["user"]["height"] <= lanes["bot"]["y"]  # caller on top
    x0, scale = axis_scale(page)
    assert scale > 20, f"{scale} px/s: the call does not fill the timeline"
    assert abs(lanes["user"]["x"] - x0) <= 1 and abs(lanes["bot"]["x"] - x0) <= 1
    for turn in record["turns"]:
        sel = f'.bar[data-turn-idx="{turn["idx"]}"]'
        bar = box(page, sel)
        assert page.get_attribute(sel, "data-speaker") == turn["speaker"]
        lane = lanes[turn["speaker"]]
        want_x = x0 + turn["start_s"] * scale
        want_w = (turn["end_s"] - turn["start_s"]) * scale
        assert abs(bar["x"] - want_x) <= PX_TOLERANCE, (turn, bar, want_x)
        assert abs(bar["width"] - max(2.0, want_w)) <= PX_TOLERANCE, (turn, bar, want_w)
        assert lane["y"] <= bar["y"] and bar["y"] + bar["height"] <= lane["y"] + lane["height"]
        lane_sel = "#lane-user" if turn["speaker"] == "user" else "#lane-bot"
        assert page.locator(f"{lane_sel} {sel}").count() == 1
        # The bubble says it, under the lanes, from the turn's start (or pushed left at the end).
        bubble_sel = f'.bubble[data-turn-idx="{turn["idx"]}"]'
        bubble = box(page, bubble_sel)
        said = " ".join(page.inner_text(bubble_sel).split())
        assert said == " ".join(turn["text"].split()), (said, turn)
        assert bubble["y"] >= lanes["bot"]["y"] + lanes["bot"]["height"]
        assert bubble["x"] <= want_x + PX_TOLERANCE
        heard = " ".join(page.inner_text(f"{bubble_sel} .heard").split())
        assert heard == " ".join(turn["heard"].split())
        if turn["interrupted"]:
            assert "interrupted" in page.get_attribute(sel, "class")
            assert page.locator(f"{sel} .cut").count() == 1
            rest = page.locator(f"{bubble_sel} .unheard")
            if turn["heard"].split() != turn["text"].split():  # cut before its last word
                colour = "e => getComputedStyle(e).color"
                assert rest.count() == 1  # the un-heard rest, greyed
                said_colour = page.locator(f"{bubble_sel} .heard").evaluate(colour)
                assert rest.evaluate(colour) != said_colour
            else:
                assert rest.count() == 0
        latency = (turn["latency"] or {}).get("voice_to_voice_ms")
        if latency is not None:
            lat_sel = f'.latency[data-turn-idx="{turn["idx"]}"]'
            lat_x = x0 + turn["latency"]["vad_speech_end"] * scale
            assert abs(box(page, lat_sel)["x"] - lat_x) <= PX_TOLERANCE
            assert float(page.get_attribute(lat_sel, "data-v2v")) == latency
            shown = page.inner_text(lat_sel)  # "640 ms" or "1.27 s"
            value = float(shown.split()[0]) * (1000 if shown.endswith(" s") else 1)
            assert abs(value - latency) <= 5, (shown, latency)
            assert page.locator(f"{lat_sel} .lat-seg").count() == 5
    # Barge-ins, states and the end of the call are marked at their times.
    events = record["events"]
    for kind, marker in (("interrupted", "barge"), ("call_ended", "end")):
        times = [e["t"] for e in events if e["type"] == kind]
        marks = page.eval_on_selector_all(
            f".marker.m-{marker}", "ms => ms.map(m => m.getBoundingClientRect().left)"
        )
        assert len(marks) == len(times), (kind, times, marks)
        for t, x in zip(times, marks, strict=True):
            assert abs(x - (x0 + t * scale)) <= PX_TOLERANCE
    states = [e for e in events if e["type"] == "state"]
    strip = page.eval_on_selector_all(
        ".state-seg", "ss => ss.map(s => [s.dataset.state, s.getBoundingClientRect().left])"
    )
    assert [s for s, _ in strip] == [e["state"] for e in states]
    for (_, x), e in zip(strip, states, strict=True):
        assert abs(x - (x0 + e["t"] * scale)) <= PX_TOLERANCE
    if any(e["type"] == "interrupted" for e in events):
        assert any(t["interrupted"] for t in record["turns"])


def check_seek_and_playhead(page: Any, turns: list[dict[str, Any]]) -> None:
    x0, scale = axis_scale(page)
    target = next(t for t in turns if t["speaker"] == "user" and t["start_s"] > 1.0)
    lane = box(page, "#lane-user")
    page.mouse.click(x0 + target["start_s"] * scale, lane["y"] + lane["height"] / 2)
    page.wait_for_function("!document.getElementById('player').seeking", timeout=5_000)
    now = page.evaluate("document.getElementById('player').currentTime")
    assert abs(now - target["start_s"]) <= 0.3, (now, target)
    page.wait_for_function(
        f"document.getElementById('player').currentTime > {target['start_s'] + 0.4}",
        timeout=10_000,
    )
    head_x, t = page.evaluate("""() => {
        const p = document.getElementById('player'); p.pause();
        return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() =>
            r([document.getElementById('playhead').getBoundingClientRect().left, p.currentTime]))));
    }""")
    assert abs(head_x - (x0 + t * scale)) <= PX_TOLERANCE, (head_x, t)
    # The turn being played is the one highlighted in the table.
    assert page.locator("#turns tr.playing").count() <= 1


def check_screenshot(page: Any, png: bytes, turns: list[dict[str, Any]]) -> None:
    image = decode_png(png).astype(np.int32)
    assert image.shape[:2] == (VIEWPORT["height"], VIEWPORT["width"])
    colours = {}
    for speaker in ("user", "bot"):
        colours[speaker] = rgb(page.eval_on_selector(
            f'.bar[data-speaker="{speaker}"]', "b => getComputedStyle(b).backgroundColor"
        ))  # fmt: skip
    assert colours["user"] != colours["bot"]

    def share_of(colour: tuple[int, int, int], x0: float, x1: float, y: float) -> float:
        row = image[int(y), int(x0) : int(x1)]
        return float(np.mean(np.all(np.abs(row - np.array(colour)) <= 6, axis=1)))

    for turn in turns:
        bar = box(page, f'.bar[data-turn-idx="{turn["idx"]}"]')
        if bar["width"] < 8:
            continue
        y = bar["y"] + bar["height"] / 2
        share = share_of(colours[turn["speaker"]], bar["x"] + 2, bar["x"] + bar["width"] - 4, y)
        # Nearly all of the bar's row is its colour (the playhead or a marker may cross it).
        assert share > 0.9, (turn, share)
    # Where the caller did not talk, its lane row is not the caller's colour.
    lane = box(page, "#lane-user")
    x0, scale = axis_scale(page)
    users = sorted((t["start_s"], t["end_s"]) for t in turns if t["speaker"] == "user")
    gap_start = users[0][1] + 0.1
    gap_end = users[1][0] - 0.1 if len(users) > 1 else gap_start + 0.3
    if gap_end - gap_start > 0.2:
        y = lane["y"] + lane["height"] / 2
        assert share_of(colours["user"], x0 + gap_start * scale, x0 + gap_end * scale, y) < 0.05


def check_search_and_filters(page: Any, record: dict[str, Any]) -> None:
    """The search box and the filters go to the API (q=, transport=) and the list follows."""
    item = f'.call-item[data-call-id="{record["id"]}"]'
    word = next(t["text"] for t in record["turns"] if t["speaker"] == "user").split()[-1]
    for action, expect in (
        (lambda: page.fill("#q", "zebra"), 0),
        (lambda: page.fill("#q", word.strip("?.,!")), 1),
        (lambda: page.select_option("#transport-filter", "sip"), 0),
        (lambda: page.select_option("#transport-filter", "ws"), 1),
    ):
        with page.expect_response(lambda r: "/v1/calls?" in r.url, timeout=10_000) as answer:
            action()
        assert answer.value.status == 200
        page.wait_for_function(f"document.querySelectorAll('{item}').length === {expect}")
        assert page.locator("#list-empty").is_visible() == (expect == 0)
    assert "transport=ws" in answer.value.url


def check_dtmf_and_error_markers(page: Any, record: dict[str, Any]) -> None:
    """DTMF digits and errors (a WebSocket call has none: added to the API's answer) are
    marked at their times, the digits in the header."""
    call_id = record["id"]
    extra = [
        {"type": "dtmf", "call_id": call_id, "t": 3.0, "digit": "7"},
        {"type": "error", "call_id": call_id, "t": 4.0, "message": "STT timed out"},
    ]
    detail = f"/v1/calls/{quote(record['id'], safe='')}"

    def answer(route: Any) -> None:
        body = route.fetch().json()
        body["events"] = sorted(body["events"] + extra, key=lambda e: e["t"])
        body["dtmf"] = "7"
        route.fulfill(json=body)

    page.route(lambda url: url.endswith(detail), answer)
    page.click(f'.call-item[data-call-id="{record["id"]}"]')
    page.wait_for_selector(".marker.m-dtmf", timeout=10_000)
    assert page.inner_text("#call-dtmf dd") == "7"
    x0, scale = axis_scale(page)
    for kind, event in (("dtmf", extra[0]), ("error", extra[1])):
        marker = page.locator(f".marker.m-{kind}")
        assert marker.count() == 1
        assert abs(marker.bounding_box()["x"] - (x0 + event["t"] * scale)) <= PX_TOLERANCE
    assert page.inner_text(".marker.m-dtmf") == "7"
    assert "STT timed out" in page.get_attribute(".marker.m-error", "title")


# -- the token ------------------------------------------------------------------------------------
def test_a_live_call_with_an_api_token(tmp_path: Path, voice: PiperTextToSpeech) -> None:
    """`?token=` in the page's URL; the call shows up while it is live (auto-refresh) and its
    recording when it has ended. Without a token the page asks for one and keeps it."""
    from playwright.sync_api import sync_playwright

    audio = place(10.0, (0.5, voice.synthesize_sync("What is the balance on my account?")))
    auth = {"Authorization": "Bearer s3cret"}
    with (
        gateway(tmp_path, VOICEBOT_API_TOKEN="s3cret") as gw,
        sync_playwright() as pw,
        ThreadPoolExecutor(1) as caller,
    ):
        assert httpx.get(f"{gw.http}/v1/calls", timeout=5).status_code == 401
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        try:
            page.goto(f"{gw.http}/calls?token=s3cret")
            page.wait_for_selector("body[data-listed='0']", timeout=10_000)
            assert page.locator("#token-form").is_hidden()
            call = caller.submit(make_call, gw, audio, auth)
            live = page.locator('.call-item[data-live="true"]')
            live.wait_for(timeout=10_000)  # the list's refresh found it
            call_id = live.get_attribute("data-call-id")
            live.click()
            page.wait_for_selector(f'#call-view[data-call-id="{call_id}"]', timeout=10_000)
            assert page.locator("#call-live").is_visible()
            assert page.locator("#player").is_hidden()  # the recording comes at the end
            assert call.result(timeout=30) == call_id
            # Ended: the list and the call refresh themselves and the recording loads.
            page.wait_for_selector(f'.call-item[data-call-id="{call_id}"][data-live="false"]',
                                   timeout=10_000)  # fmt: skip
            page.wait_for_function("document.body.dataset.audio === 'ready'", timeout=10_000)
            record = closed_record(gw, call_id, headers=auth)
            assert page.locator("#call-live").count() == 0
            assert page.locator(".bar").count() == len(record["turns"]) >= 2
            assert page.evaluate("document.getElementById('player').duration") > 5.0

            # No token: the page asks for one, keeps it, and then shows the calls.
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.goto(f"{gw.http}/calls")
            page.wait_for_selector("body[data-auth='needed']", timeout=10_000)
            assert page.locator("#token-form").is_visible()
            assert page.locator(".call-item").count() == 0
            page.fill("#token-input", "wrong")
            page.click("#token-form button")
            page.wait_for_function(
                "document.getElementById('token-error').textContent.includes('refused')"
            )  # fmt: skip
            page.fill("#token-input", "s3cret")
            page.click("#token-form button")
            open_call(page, call_id)
            assert page.evaluate("localStorage.getItem('voicebot.apiToken')") == "s3cret"
            page.reload()  # remembered
            page.wait_for_selector(f'.call-item[data-call-id="{call_id}"]', timeout=10_000)
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "call-inspector-token-failed.png"))
            raise
        finally:
            browser.close()
