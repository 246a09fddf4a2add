"""The web page in a real browser: headless Debian chromium whose fake microphone plays a
generated caller; the page calls the bot, shows the transcript and reply, and plays it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.browser import CHROMIUM, browser_page
from tests.gateway_server import gateway
from voicebot.audio.resample import resample_whole
from voicebot.audio.wav import write_wav
from voicebot.models.tts.piper import PiperTextToSpeech

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


def fake_mic(path: Path, text: str) -> Path:
    voice = PiperTextToSpeech(noise_scale=0.0, noise_w_scale=0.0)
    speech = voice.synthesize_sync(text)
    audio = np.concatenate([np.zeros(16000 * 2, np.int16), speech, np.zeros(16000 * 12, np.int16)])
    write_wav(path, resample_whole(audio, 16000, 48000), 48000)
    return path


def test_page_calls_the_bot_over_websocket(tmp_path: Path) -> None:
    wav = fake_mic(tmp_path / "caller.wav", "Hi, what is the balance on my account?")
    with gateway(tmp_path) as gw, browser_page(wav, "web-page-ws") as page:
        page.goto(gw.http)
        assert page.title() == "voicebot"
        page.select_option("#transport", "ws")
        page.click("#start")
        page.wait_for_selector("body[data-connected='ws']", timeout=15_000)
        caller = page.wait_for_selector(".msg.caller", timeout=30_000)
        assert "balance" in caller.inner_text().lower()
        bot = page.wait_for_selector(".msg.bot", timeout=30_000)
        assert bot.inner_text().startswith("Your account balance is")
        page.wait_for_function("Number(document.body.dataset.playedSamples || 0) > 16000",
                               timeout=15_000)  # fmt: skip
        assert page.get_attribute("#state", "data-state") in ("SPEAKING", "WAITING_FOR_SPEECH")
        page.click("#stop")
        page.wait_for_selector("#start:not([disabled])", timeout=10_000)
        assert "call ended" in page.inner_text("#chat")


def test_page_calls_the_bot_over_webrtc(tmp_path: Path) -> None:
    wav = fake_mic(tmp_path / "caller.wav", "Hi, what is the balance on my account?")
    with (
        gateway(tmp_path, VOICEBOT_WEBRTC__LOOPBACK_ONLY="true") as gw,
        browser_page(wav, "web-page-webrtc") as page,
    ):
        page.goto(gw.http)
        assert page.eval_on_selector("#transport", "el => el.value") == "webrtc"
        page.click("#start")
        page.wait_for_selector("body[data-connected='webrtc']", timeout=20_000)
        caller = page.wait_for_selector(".msg.caller", timeout=30_000)
        assert "balance" in caller.inner_text().lower()
        bot = page.wait_for_selector(".msg.bot", timeout=30_000)
        assert bot.inner_text().startswith("Your account balance is")
        page.wait_for_function("Number(document.body.dataset.playedEnergy || 0) > 0.01",
                               timeout=15_000)  # fmt: skip
        page.click("#stop")
        page.wait_for_selector("#start:not([disabled])", timeout=10_000)
