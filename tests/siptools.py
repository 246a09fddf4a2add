"""SIPp as the caller, tcpdump as the ear: helpers for the SIP tests (loopback only).

`sipp(...)` runs a scenario from tests/sip/ against the gateway; `rtp_capture(port)` records
what reaches the caller's media port; `write_dtmf_pcap` makes RFC 4733 telephone-event
packets for SIPp's play_pcap_audio.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.audio import g711

SIP_DIR = Path(__file__).resolve().parent / "sip"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
TCPDUMP = shutil.which("tcpdump") or "/usr/bin/tcpdump"
DTMF_EVENTS = "0123456789*#ABCD"


def sipp(
    scenario: str,
    sip_port: int,
    *,
    keys: dict[str, str] | None = None,
    media_port: int = 16000,
    local_port: int = 0,
    calls: int = 1,
    rate: float = 1,
    timeout_s: float = 60,
    log_dir: Path | None = None,
    fill: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a scenario; `fill` replaces @NAME@ placeholders (in a copy in `log_dir`);
    `extra_args` go to SIPp as they are (e.g. `["-cid_str", "%u-tag-%p@%s"]`)."""
    cwd = log_dir or Path.cwd()
    text = (SIP_DIR / scenario).read_text()
    for name, value in (fill or {}).items():
        text = text.replace(f"@{name}@", value)
    scenario_path = cwd / f"filled-{scenario}"
    scenario_path.write_text(text)
    args = [
        SIPP, f"127.0.0.1:{sip_port}", "-sf", str(scenario_path), "-i", "127.0.0.1",
        "-mi", "127.0.0.1", "-mp", str(media_port), "-m", str(calls), "-r", str(rate),
        "-l", str(calls), "-timeout", f"{int(timeout_s)}s", "-timeout_error", "-nostdin",
        "-trace_err",
    ]  # fmt: skip
    if local_port:
        args += ["-p", str(local_port)]
    for key, value in (keys or {}).items():
        args += ["-key", key, value]
    args += extra_args or []
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s + 30, cwd=cwd)


@contextlib.contextmanager
def rtp_capture(dst_port: int, path: Path) -> Iterator[Path]:
    """tcpdump of UDP to `dst_port` on loopback, written to `path` while inside."""
    proc = subprocess.Popen(
        [TCPDUMP, "-i", "lo", "-U", "-n", "-w", str(path), "udp", "and", "dst", "port",
         str(dst_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.8)  # let tcpdump open the device before packets flow
    try:
        yield path
    finally:
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class CapturedRtp:
    time: float
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def read_rtp_pcap(path: Path) -> list[CapturedRtp]:
    """RTP packets of a pcap (Ethernet or Linux cooked capture, IPv4/UDP)."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    link_len = {1: 14, 113: 16, 276: 20, 0: 4}.get(linktype, 14)
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(endian + "IIII", data[pos : pos + 16])
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        ip = frame[link_len:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4 :]
        rtp = udp[8:]
        if len(rtp) < 12 or rtp[0] >> 6 != 2:
            continue
        cc = rtp[0] & 0x0F
        pt = rtp[1] & 0x7F
        seq, ts, ssrc = struct.unpack("!HII", rtp[2:12])
        out.append(CapturedRtp(sec + frac / (1e9 if nano else 1e6), pt, seq, ts, ssrc,
                               rtp[12 + 4 * cc :]))  # fmt: skip
    return out


def decode_g711(packets: list[CapturedRtp], payload_type: int) -> np.ndarray:
    audio = [p for p in packets if p.payload_type == payload_type]
    if not audio:
        return np.zeros(0, np.int16)
    raw = b"".join(p.payload for p in audio)
    return g711.ulaw_decode(raw) if payload_type == 0 else g711.alaw_decode(raw)


def _udp_frame(payload: bytes, sport: int = 40000, dport: int = 40002) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))  # fmt: skip
    checksum = 0
    for i in range(0, 20, 2):
        checksum += (ip[i] << 8) + ip[i + 1]
    checksum = (checksum & 0xFFFF) + (checksum >> 16)
    ip = ip[:10] + struct.pack("!H", ~checksum & 0xFFFF) + ip[12:]
    return b"\x00" * 12 + b"\x08\x00" + ip + udp  # Ethernet: zero MACs, IPv4


def write_dtmf_pcap(path: Path, digits: str, pt: int = 101, gap_ms: int = 300) -> Path:
    """RFC 4733 events for `digits`: 5 updates every 20 ms, then 3 end packets (E bit)."""
    records = []
    t, seq, ts = 0.0, 1000, 8000
    for digit in digits:
        event = DTMF_EVENTS.index(digit.upper())
        marker = 0x80
        for k in range(5):
            body = struct.pack("!BBH", event, 10, 160 * (k + 1))
            records.append((t, struct.pack("!BBHII", 0x80, marker | pt, seq, ts, 0x1234) + body))
            marker, seq, t = 0, seq + 1, t + 0.02
        for _ in range(3):
            body = struct.pack("!BBH", event, 0x80 | 10, 800)
            records.append((t, struct.pack("!BBHII", 0x80, pt, seq, ts, 0x1234) + body))
            seq += 1
        t += gap_ms / 1000
        ts += int(8 * (100 + gap_ms))
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for when, rtp in records:
        frame = _udp_frame(rtp)
        sec = int(when)
        out.append(struct.pack("<IIII", 1_700_000_000 + sec, int((when - sec) * 1e6),
                               len(frame), len(frame)) + frame)  # fmt: skip
    path.write_bytes(b"".join(out))
    return path
