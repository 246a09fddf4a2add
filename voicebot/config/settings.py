"""Settings: every tunable of the gateway, typed, from env vars, a `.env` or a TOML file.

Top-level names follow DESIGN.md (`VOICEBOT_HOST`, `VOICEBOT_PORT`, `VOICEBOT_SIP_PORT`,
`VOICEBOT_API_TOKEN`, `VOICEBOT_SIP_ALLOW`); sections nest with a double underscore
(`VOICEBOT_VAD__MIN_SILENCE_MS=300`). `VOICEBOT_CONFIG=path.toml` adds a file whose tables
mirror the sections (`[vad]`); env vars win over the file. Every default runs offline.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from voicebot.agent.config import AgentConfig
from voicebot.models.config import EngineSettings
from voicebot.models.vad.segmenter import VadParams


class VadSettings(BaseModel):
    """Silero VAD and the speech segmenter on top of it."""

    activation_threshold: float = Field(0.5, ge=0.0, le=1.0)
    deactivation_threshold: float = Field(0.35, ge=0.0, le=1.0)
    min_speech_ms: int = Field(100, ge=0, le=10_000)
    min_silence_ms: int = Field(500, ge=0, le=10_000)
    prefix_padding_ms: int = Field(200, ge=0, le=2_000)
    max_speech_ms: int = Field(30_000, ge=1_000, le=120_000, description="cut longer segments")
    model_path: Path | None = Field(
        None, description="Another Silero ONNX file instead of the packaged one (no sha check)."
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> VadSettings:
        if self.deactivation_threshold > self.activation_threshold:
            raise ValueError("vad.deactivation_threshold must not exceed activation_threshold")
        return self

    def params(self) -> VadParams:
        return VadParams(
            activation_threshold=self.activation_threshold,
            deactivation_threshold=self.deactivation_threshold,
            min_speech_ms=self.min_speech_ms,
            min_silence_ms=self.min_silence_ms,
            prefix_padding_ms=self.prefix_padding_ms,
            max_speech_ms=self.max_speech_ms,
        )


class IceServer(BaseModel):
    urls: list[str] | str
    username: str | None = None
    credential: str | None = None


class WebRtcSettings(BaseModel):
    """The WebRTC leg. No ICE servers by default: host candidates only."""

    ice_servers: list[IceServer] = Field(default_factory=list)
    loopback_only: bool = Field(
        False, description="host candidates on 127.0.0.1 only (single-host tests and demos)"
    )
    connect_timeout_s: float = Field(20.0, gt=0, description="offer -> caller's audio")


class SipSettings(BaseModel):
    """The SIP leg (port: VOICEBOT_SIP_PORT; allow-list: VOICEBOT_SIP_ALLOW)."""

    bind: str = Field("127.0.0.1", description="address the SIP and RTP sockets bind to")
    advertise_address: str | None = Field(
        None, description="address put in Contact and SDP (default: bind, or 127.0.0.1)"
    )
    rtp_port_min: int = Field(20000, ge=1024, le=65534)
    rtp_port_max: int = Field(20999, ge=1025, le=65535)
    answer_delay_ms: int = Field(200, ge=0, description="ringing before the bot answers")
    max_calls: int | None = Field(None, description="SIP calls at most (default: max_calls)")
    overload_late_ratio: float = Field(
        0.02, ge=0, le=1,
        description="refuse new calls (503) while more than this share of the media ticks of"
        " the last 5 s ran late (0 = never refuse on load)",
    )  # fmt: skip
    # The tick's time includes its wait for the VAD thread's batch (the loop runs other
    # callbacks meanwhile); its packets leave at the next tick's start, so up to 20 ms is on
    # time. 100 SIP calls ran with 0 late packets at a tick of ~11.7 ms (0.58) on a 2-core
    # Xeon (bench/RESULTS.md "SIP load"); 0.6 keeps 8 ms for jitter and other loop work.
    tick_budget: float = Field(
        0.6, ge=0, le=1,
        description="refuse new calls (503) when the shared 20 ms media tick, predicted from"
        " its measured time per call, would take more than this share of its period with one"
        " more call (0 = no prediction)",
    )  # fmt: skip
    source_rate: float = Field(
        20.0, ge=0,
        description="new out-of-dialog SIP requests (INVITE, OPTIONS, ...) one source IP may"
        " send per second, sustained; over it 503 + Retry-After, then nothing (0 = no limit)",
    )  # fmt: skip
    source_burst: int = Field(
        200, ge=1, description="how many such requests one source may send at once"
    )
    user_agent: str = "voicebot"
    variable_headers: list[str] = Field(
        default_factory=lambda: ["X-*", "P-Asserted-Identity", "Diversion", "Referred-By"],
        description="INVITE headers that become call variables (calls/variables.py: "
        "X-Customer-Id -> customer_id); `X-*` takes every X- header; [] takes none",
    )  # fmt: skip
    echo_cancellation: bool = Field(True, description="cancel the bot's own line echo")
    noise_suppression: Literal["off", "spectral", "webrtc"] = Field(
        "off", description="denoise callers before the VAD (bench/RESULTS.md: what it does)"
    )
    # Registration mode: REGISTER to a PBX as an extension.
    register_uri: str | None = Field(None, description="e.g. sip:pbx.example.com:5060")
    username: str | None = None
    password: str | None = None
    register_expires: int = Field(300, ge=30)
    # Transfers (SipCall.transfer, telephony/refer_to.py): what the REFER's Refer-To carries
    # to the agent's side as embedded headers, and how long its outcome is waited for.
    transfer_uui: bool = Field(
        True, description="User-to-User (RFC 7433) with the call id, hex, in the Refer-To"
    )
    transfer_uui_purpose: str = Field(
        "voicebot-call-id", description="its `purpose` parameter (the UUI package name)"
    )
    transfer_headers: dict[str, str] = Field(
        default_factory=dict,
        description="extra headers embedded in the Refer-To (e.g. {\"X-Queue\": \"billing\"})",
    )
    transfer_notify_timeout_s: float = Field(
        30.0, gt=0, le=600,
        description="after a 202, wait this long for the final NOTIFY sipfrag; without one"
        " the transfer counts as handed over (unconfirmed) and the bot hangs up",
    )  # fmt: skip


class OutboundSettings(BaseModel):
    """Calls the bot places (`POST /v1/calls`); the request's `trunk` overrides these."""

    max_calls: int = Field(20, ge=0, description="outbound calls up at once at most (0 = none)")
    calls_per_second: float = Field(
        2.0, ge=0, description="new outbound calls per second, sustained (0 = no limit)"
    )
    burst: int = Field(5, ge=1, description="outbound calls that may start at once")
    ring_timeout_s: float = Field(30.0, gt=0, le=300, description="CANCEL if not answered")
    proxy: str | None = Field(
        None, description="outbound proxy / trunk, e.g. sip:trunk.example.com:5060: every "
        "INVITE goes there (numbers are dialled at its domain)",
    )  # fmt: skip
    domain: str | None = Field(None, description="domain for numbers (default: the proxy's)")
    username: str | None = Field(None, description="digest user for the trunk's challenges")
    password: str | None = None
    caller_id: str | None = Field(None, description="From user (default: username, voicebot)")
    early_media: Literal["ignore", "pass"] = Field(
        "ignore", description="183 early media: ignored until the answer, or passed to the bot "
        "(it hears the callee's announcements; it is not heard before the answer)",
    )  # fmt: skip


class AudioSocketSettings(BaseModel):
    """Asterisk AudioSocket (TCP) calls; the port is the top-level `audiosocket_port`."""

    bind: str = Field("127.0.0.1", description="address the AudioSocket server binds to")
    idle_timeout_s: float = Field(10.0, gt=0, description="end a connection silent this long")
    setup_timeout_s: float = Field(5.0, gt=0, description="wait this long for the UUID frame")
    lookup_url: str | None = Field(
        None, description="GET this URL for a call's variables (a JSON object) when its UUID "
        "comes: `{uuid}` in it is replaced by the UUID, else `?uuid=` is added; unset: none",
    )  # fmt: skip
    lookup_timeout_s: float = Field(
        1.0, gt=0, le=10, description="the lookup answers within this or the call goes on "
        "without its variables (the greeting waits for it)",
    )  # fmt: skip


class ServerSettings(BaseModel):
    """Limits of the HTTP/WebSocket gateway."""

    max_calls: int = Field(200, ge=1)
    shutdown_grace_s: float = Field(30.0, ge=0.0, description="SIGTERM: time calls get to end")
    ws_idle_timeout_s: float = Field(30.0, gt=0, description="close a silent WebSocket")
    ws_client_buffer_frames: int = Field(3, ge=0, description="client playout buffer assumed")
    warm_up: bool = Field(True, description="run each engine once at start-up")
    events_log: Path | None = Field(None, description="append every call event here (JSONL)")
    cpu_budget: float = Field(
        0.8, ge=0, le=1,
        description="new calls are refused while this process's CPU, predicted from what a"
        " call costs here (measured, see cpu_per_call) with one more call, would pass this"
        " share of its CPUs (0 = never refuse on it; the rest is headroom for a proxy, a"
        " database, packet capture on the same box)",
    )  # fmt: skip
    cpu_per_call: float = Field(
        0.015, ge=0,
        description="CPUs one call is assumed to use until the gateway has measured its own,"
        " scaled by the start-up calibration (cpu_calibrate) to this machine's speed (1.5 % of"
        " a core, ~105 calls on 2 CPUs: a SIP call with tiny.en, espeak-ng and the scripted"
        " LLM, records and recordings on, measured 1.24-1.27 % at 100 calls on a quiet 2-core"
        " Xeon with AVX-512 VNNI, the machine the calibration's reference times come from)",
    )  # fmt: skip
    cpu_calibrate: bool = Field(
        True,
        description="at start-up, time a call's media, VAD and turn-model work (~0.25 s) and"
        " scale the cpu_per_call prior by how much slower or faster this machine does it than"
        " the one the prior was measured on (x0.5 to x4)",
    )  # fmt: skip
    stall_log_ms: float = Field(
        60.0, ge=0,
        description="log (one line, at most one a second) and count each time one callback"
        " holds the event loop longer than this, with where it was (0 = off)",
    )  # fmt: skip
    max_engine_wait_s: float = Field(
        3.0, ge=0,
        description="refuse new calls while STT, TTS or LLM requests wait longer than this for"
        " their model (the machine carries no more conversations; 0 = never refuse on it)",
    )  # fmt: skip


class RecordsSettings(BaseModel):
    """Call records (calls/records/): every call, its turns and events, in a database.

    The database is `VOICEBOT_DATABASE_URL` (default a SQLite file in `VOICEBOT_DATA_DIR`);
    recordings are files under `<data dir>/recordings`."""

    enabled: bool = Field(True, description="keep a record of every call")
    recording: bool = Field(True, description="record each call: stereo WAV, caller left")
    retention_days: float = Field(
        30.0, ge=0, description="delete records and recordings older than this (0 = keep)"
    )
    queue_size: int = Field(
        100_000, ge=100,
        description="record writes held in memory while the database is slow or down; past"
        " it the oldest calls' events are dropped (counted), never the media path blocked",
    )  # fmt: skip
    batch_size: int = Field(500, ge=1, description="writes per database transaction at most")
    heartbeat_s: float = Field(
        15.0, gt=0,
        description="how often a gateway marks its running calls alive in the records (with"
        " +-20 % jitter) and sweeps the records of gateways whose heartbeat stopped",
    )  # fmt: skip
    heartbeat_timeout_s: float = Field(
        60.0, gt=0,
        description="an open record whose gateway has not beaten for this long is closed as"
        " gateway_lost by another gateway sharing the database (at least 2 x heartbeat_s)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _timeout_over_beats(self) -> RecordsSettings:
        if self.heartbeat_timeout_s < 2 * self.heartbeat_s:
            raise ValueError("records.heartbeat_timeout_s must be at least 2 x heartbeat_s")
        return self


class WebhookSettings(BaseModel):
    """Webhooks (calls/webhooks/): call events POSTed to `urls`, signed per Standard
    Webhooks with `secret`, delivered at least once from the database's outbox."""

    urls: list[str] = Field(default_factory=list, description="receivers of every call event")
    secret: str | None = Field(
        None, description="whsec_<base64> signing key (Standard Webhooks); required with urls"
    )
    timeout_s: float = Field(10.0, gt=0, description="one delivery attempt at most")
    max_age_h: float = Field(
        24.0, gt=0, description="retry for this long, then the delivery is dead-lettered"
    )
    backoff_base_s: float = Field(1.0, gt=0, description="first retry after about this long")
    backoff_max_s: float = Field(900.0, gt=0, description="longest wait between two attempts")
    concurrency: int = Field(8, ge=1, description="deliveries in flight at once")

    @model_validator(mode="after")
    def _secret_with_urls(self) -> WebhookSettings:
        if self.urls and not self.secret:
            raise ValueError("webhooks.secret (whsec_...) is required when webhooks.urls is set")
        return self


class Settings(BaseSettings):
    """All gateway settings. Build with `load_settings()`."""

    model_config = SettingsConfigDict(
        env_prefix="VOICEBOT_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    sip_port: int = Field(5060, ge=0, le=65535, description="UDP port for SIP; 0 disables SIP.")
    api_token: str | None = None
    sip_allow: list[str] = Field(default_factory=list, description="CIDRs allowed to send SIP.")
    audiosocket_port: int = Field(
        0, ge=0, le=65535, description="TCP port for Asterisk AudioSocket; 0 disables it."
    )
    log_level: str = "info"
    vad: VadSettings = Field(default_factory=VadSettings)
    engines: EngineSettings = Field(default_factory=EngineSettings)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    server: ServerSettings = Field(default_factory=ServerSettings)
    webrtc: WebRtcSettings = Field(default_factory=WebRtcSettings)
    sip: SipSettings = Field(default_factory=SipSettings)
    audiosocket: AudioSocketSettings = Field(default_factory=AudioSocketSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    data_dir: Path = Field(Path("data"), description="records and recordings (VOICEBOT_DATA_DIR)")
    database_url: str | None = Field(
        None, description="sqlite+aiosqlite:///... or postgresql://...; default a SQLite file"
        " in data_dir",
    )  # fmt: skip
    gateway_id: str | None = Field(
        None, description="this gateway's name in shared records (default hostname[:address]:port)"
    )
    records: RecordsSettings = Field(default_factory=RecordsSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

    @model_validator(mode="after")
    def _front_desk_greeting(self) -> Settings:
        # The front desk greets as its business profile says, unless a greeting was set.
        if self.engines.llm == "frontdesk" and "greeting" not in self.agent.model_fields_set:
            from voicebot.models.base import EngineError
            from voicebot.models.llm.business_profile import BusinessProfile

            try:
                profile = BusinessProfile.from_file(self.engines.business_profile)
            except EngineError as exc:
                raise ValueError(str(exc)) from exc
            self.agent.greeting = profile.greeting
        return self

    @property
    def database(self) -> str:
        """The records database URL (SQLAlchemy async form): `database_url`, with plain
        postgresql:// taken as asyncpg, or a SQLite file in `data_dir`."""
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'voicebot.db').resolve()}"
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+asyncpg://" + url[len(plain) :]
        if url.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
        return url

    @property
    def gateway_name(self) -> str:
        """This gateway's name in shared records: `gateway_id`, or hostname:port, with the
        bound address in between when it is not a wildcard (several gateways on one machine
        bound to 127.0.0.2, .3, ... on one port must not share a name)."""
        if self.gateway_id:
            return self.gateway_id
        if self.host in ("", "0.0.0.0", "::"):
            return f"{socket.gethostname()}:{self.port}"
        return f"{socket.gethostname()}:{self.host}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get("VOICEBOT_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and `VOICEBOT_CONFIG`), with explicit overrides on top."""
    config_file = os.environ.get("VOICEBOT_CONFIG")
    if config_file and not Path(config_file).is_file():
        raise FileNotFoundError(f"VOICEBOT_CONFIG={config_file}: no such file")
    return Settings(**overrides)
