"""Debian chromium, headless, driven by Playwright (never a downloaded browser), with a fake
microphone fed from a WAV file."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def chromium_args(fake_mic_wav: Path) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        # WebRTC over loopback only: no mDNS-hidden host candidates, 127.0.0.1 allowed.
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]


@contextlib.contextmanager
def browser_page(fake_mic_wav: Path, name: str) -> Iterator[object]:
    """A page in a fresh headless chromium; a screenshot lands in test-artifacts/ if the
    test body fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(fake_mic_wav)
        )
        page = browser.new_page()
        logs: list[str] = []
        page.on("console", lambda msg: logs.append(f"{msg.type}: {msg.text}"))
        try:
            yield page
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
            (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(logs))
            raise
        finally:
            browser.close()
