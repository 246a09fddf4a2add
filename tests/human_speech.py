"""Real human speech with transcripts, for tests and benches: the recordings in the
`pocketsphinx` 5.1.1 source archive on PyPI (test/data: five spoken card names, five
LibriVox sentences read from Sense and Sensibility, "go forward ten meters").

Synthetic voices hide STT and turn-taking faults (short utterances, digits, hesitations);
these are people. `make setup` fetches the archive once (pinned sha256, see
voicebot.models.registry_files); `recordings()` returns them as 16 kHz mono int16.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.models.registry_files import ArchiveMember, RegistryArchive, register

POCKETSPHINX_SDIST = RegistryArchive(
    "pocketsphinx", "pocketsphinx-5.1.1.tar.gz",
    "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
)  # fmt: skip
_DATA = "pocketsphinx-5.1.1/test/data"


@dataclass(frozen=True)
class Recording:
    """One recorded utterance and what was said (lower case, words only)."""

    key: str
    kind: str  # "short" (card names, commands) or "read" (LibriVox sentences)
    transcript: str
    member: ArchiveMember

    def samples(self) -> np.ndarray:
        """16 kHz mono int16 (every file in the archive is 16 kHz already; checked)."""
        path = self.member.path()
        if path.suffix == ".raw":
            return np.fromfile(path, dtype="<i2").astype(np.int16)
        with wave.open(str(path), "rb") as wav:
            if wav.getframerate() != 16000 or wav.getnchannels() != 1 or wav.getsampwidth() != 2:
                raise ValueError(f"{path.name}: not 16 kHz mono 16-bit")
            return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").copy()


def _member(key: str, rel: str, sha256: str) -> ArchiveMember:
    return ArchiveMember(f"speech-{key}", POCKETSPHINX_SDIST, f"{_DATA}/{rel}", sha256)


_LIBRIVOX = "librivox/sense_and_sensibility_01_austen_64kb"
RECORDINGS: tuple[Recording, ...] = (
    Recording("cards-001", "short", "ten of clubs", _member(
        "cards-001", "cards/001.wav",
        "899951e768666f27c8f8b1d4090b96fe7909cae9cec01bec0a5d5d1b8a8d566e")),
    Recording("cards-002", "short", "four queen of clubs", _member(
        "cards-002", "cards/002.wav",
        "a3f9eae6fdb69a1231989e39a14d62388a6f52fb59666c76d95005318fadafec")),
    Recording("cards-003", "short", "seven of clubs", _member(
        "cards-003", "cards/003.wav",
        "00d283e46bc257ae479e4aa86593cadb541656eba1d19fc8abeece37f6a5a18b")),
    Recording("cards-004", "short", "five five", _member(
        "cards-004", "cards/004.wav",
        "4c44a8177f5b128b99f078cdeb918119933155574231f1833e8840d1af09c521")),
    Recording("cards-005", "short", "eight of spades four of clubs seven of hearts", _member(
        "cards-005", "cards/005.wav",
        "090f18f5f76cf8b2b43cd9e6b07823f4685a4742d9a36cd98b174a6586c18cf9")),
    Recording("goforward", "short", "go forward ten meters", _member(
        "goforward", "goforward.raw",
        "f15c60ec54059d8b66e410d0064945a0b0a04ea56e1ddca1958e493c0cf70e71")),
    Recording("librivox-0870", "read",
              "and mister john dashwood had then leisure to consider how much there might be "
              "prudently in his power to do for them", _member(
        "librivox-0870", f"{_LIBRIVOX}-0870.wav",
        "b0557cf95c974d930577e58e46b7f068c432a6e3afcc286563d88922b2a5315c")),
    Recording("librivox-0880", "read", "he was not an ill disposed young man", _member(
        "librivox-0880", f"{_LIBRIVOX}-0880.wav",
        "fbec491ef00ee734a67f0ee318e98c51c157b479e1629ff4f4426861ecac0414")),
    Recording("librivox-0890", "read",
              "unless to be rather cold hearted and rather selfish is to be ill disposed", _member(
        "librivox-0890", f"{_LIBRIVOX}-0890.wav",
        "5793ffbdee55fb8bfd284943a6866864c832d9d4accf2661cabd39915c84ee10")),
    Recording("librivox-0920", "read",
              "had he married a more a amiable woman he might have been made still more "
              "respectable than he was", _member(
        "librivox-0920", f"{_LIBRIVOX}-0920.wav",
        "40882414ef4cc51f3ff7a63bad0c8c87e7f595ffeb8209fbf756c8ebc5c28a59")),
    Recording("librivox-0930", "read", "he might even have been made amiable himself", _member(
        "librivox-0930", f"{_LIBRIVOX}-0930.wav",
        "954adbf0b56ac8a148cbe77b39ca18d76b5f2a1e1f405565bd786ce3e68a68b7")),
)  # fmt: skip

register(*(r.member for r in RECORDINGS))

# A digit string, kept out of RECORDINGS so the sets other benches measure stay as they
# were: read by pocketsphinx's author (dhd) and named as TIDIGITS names its files
# (2934z = "two nine three four zero", z = zero; the test set's man.ah.2934za says the same).
DIGITS = Recording("digits-2934z", "short", "two nine three four zero", _member(
    "digits-2934z", "tidigits/dhd.2934z.raw",
    "60c14412ad1412b83f37061e29c9e76f74cce0f90637debb8087f10cd559e552"))  # fmt: skip
register(DIGITS.member)


def recordings(kind: str | None = None) -> list[Recording]:
    """All recordings, or those of one kind ("short" / "read")."""
    return [r for r in RECORDINGS if kind is None or r.kind == kind]


def available() -> bool:
    """True when set-up has fetched every recording (tests skip with a reason otherwise)."""
    return all(r.member.cached().is_file() for r in RECORDINGS)


def recording_paths() -> list[Path]:
    return [r.member.path() for r in RECORDINGS]
