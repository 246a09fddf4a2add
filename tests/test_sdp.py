"""SDP offer/answer for SIP audio (RFC 3264 section 6): every offered m-line answered, in
order, the ones not taken rejected with port 0; malformed (400) told from unacceptable (488)."""

from __future__ import annotations

import pytest

from voicebot.telephony.sdp import (
    PCMU,
    SdpError,
    SdpNotAcceptableError,
    build_answer,
    choose_codec,
    parse_offer,
)

HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
AUDIO = "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
VIDEO = "m=video 30000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"


def _m_lines(answer: str) -> list[str]:
    return [line for line in answer.split("\r\n") if line.startswith("m=")]


def test_audio_and_video_offer_gets_two_m_lines_video_rejected() -> None:
    offer = parse_offer(HEAD + AUDIO.format(port=4000) + VIDEO)
    answer = build_answer(offer, choose_codec(offer), "127.0.0.1", 20000)
    assert _m_lines(answer) == ["m=audio 20000 RTP/AVP 0 101", "m=video 0 RTP/AVP 96"]


def test_a_disabled_audio_stream_stays_disabled_and_the_next_is_taken() -> None:
    offer = parse_offer(HEAD + VIDEO + AUDIO.format(port=0) + AUDIO.format(port=4002))
    assert offer.port == 4002 and offer.index == 2
    answer = build_answer(offer, PCMU, "127.0.0.1", 20000)
    assert _m_lines(answer) == [
        "m=video 0 RTP/AVP 96", "m=audio 0 RTP/AVP 0 101", "m=audio 20000 RTP/AVP 0 101",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "media",
    [VIDEO, AUDIO.format(port=0), "m=audio 4000 RTP/SAVP 0\r\n"],
    ids=["video-only", "audio-port-0", "srtp"],
)
def test_nothing_answerable_is_488_not_400(media: str) -> None:
    with pytest.raises(SdpNotAcceptableError):
        parse_offer(HEAD + media)


@pytest.mark.parametrize(
    "sdp",
    [HEAD + "m=audio ٣٠٠٠ RTP/AVP 0\r\n", HEAD + "m=audio 4000 RTP/AVP ²\r\n",
     HEAD + "m=audio 70000 RTP/AVP 0\r\n", HEAD, "x=1\r\n"],
    ids=["arabic-digits-port", "superscript-pt", "port-range", "no-m-line", "no-v"],
)  # fmt: skip
def test_malformed_offers_are_sdp_errors(sdp: str) -> None:
    with pytest.raises(SdpError) as caught:
        parse_offer(sdp)
    assert not isinstance(caught.value, SdpNotAcceptableError)


def test_odd_ptime_is_ignored_not_fatal() -> None:
    offer = parse_offer(HEAD + AUDIO.format(port=4000) + "a=ptime:²\r\n")
    assert offer.port == 4000 and choose_codec(offer) == PCMU
