"""The `voicebot` command line (DESIGN.md section 3): the entry point users run.

Each subcommand is a thin shell over library code; errors are reported as one line on
stderr with a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from voicebot import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A failure to report as one line, with the exit status to use."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def _default_neg_threshold(threshold: float | None, configured: float) -> float:
    # A lowered --threshold drags the deactivation threshold with it, 0.15 below (as Silero's
    # own segmenter does), so the pair stays a valid hysteresis.
    if threshold is None:
        return configured
    return max(0.0, min(configured, threshold - 0.15))


def _cmd_vad(args: argparse.Namespace) -> int:
    from voicebot.audio.wav import WavError, read_wav_canonical
    from voicebot.config import load_settings
    from voicebot.models.vad import ModelIntegrityError, VadParams, detect_speech_segments

    vad_cfg = load_settings().vad
    try:
        params = VadParams(
            activation_threshold=(
                args.threshold if args.threshold is not None else vad_cfg.activation_threshold
            ),
            deactivation_threshold=(
                args.neg_threshold
                if args.neg_threshold is not None
                else _default_neg_threshold(args.threshold, vad_cfg.deactivation_threshold)
            ),
            min_speech_ms=(
                args.min_speech_ms if args.min_speech_ms is not None else vad_cfg.min_speech_ms
            ),
            min_silence_ms=(
                args.min_silence_ms if args.min_silence_ms is not None else vad_cfg.min_silence_ms
            ),
            prefix_padding_ms=vad_cfg.prefix_padding_ms,
        )
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    try:
        samples = read_wav_canonical(args.file)
    except WavError as exc:
        raise CliError(f"{args.file}: {exc}") from exc
    try:
        segments = detect_speech_segments(samples, params)
    except ModelIntegrityError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print(json.dumps([s.as_dict() for s in segments]))
    else:
        duration = len(samples) / 16000
        print(f"{args.file}: {duration:.3f} s, {len(segments)} speech segment(s)")
        for seg in segments:
            print(f"{seg.start:9.3f} {seg.end:9.3f}  ({seg.end - seg.start:.3f} s)")
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from voicebot.models.catalog import check_models

    rows = check_models(load=args.load)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['kind']:4} {r['engine']:34} {r['status']}")
            print(f"     source: {r['source']}")
            for f in r["files"]:
                print(f"     {f['status']:4} {f['path']}  sha256 {f['sha256'][:16]}...")
    return EXIT_OK if all(r["status"] in ("ok", "not configured") for r in rows) else EXIT_FAILURE


def _cmd_simulate(args: argparse.Namespace) -> int:
    import asyncio

    import numpy as np

    from voicebot.agent.events import BotText, ErrorRaised, Interrupted, TranscriptReady
    from voicebot.agent.simulator import simulate_call
    from voicebot.audio.wav import WavError, read_wav_canonical, write_wav
    from voicebot.config import load_settings
    from voicebot.models.base import EngineError
    from voicebot.models.factory import build_engines, warm_up
    from voicebot.models.weights import ModelUnavailableError

    for name in ("stt", "llm", "tts"):
        value = getattr(args, name)
        if value:  # as settings, read with the rest: the greeting follows the LLM engine
            os.environ[f"VOICEBOT_ENGINES__{name.upper()}"] = value
    settings = load_settings()
    try:
        caller = read_wav_canonical(args.file)
    except WavError as exc:
        raise CliError(f"{args.file}: {exc}") from exc
    try:
        engines = build_engines(settings.engines)
    except (EngineError, ModelUnavailableError) as exc:
        raise CliError(str(exc)) from exc

    async def run():  # type: ignore[no-untyped-def]
        from voicebot.models.turn import load_turn_model
        from voicebot.models.turn.text import load_text_turn_model

        await warm_up(engines)
        smart = settings.agent.endpointing == "smart_turn"
        by_words = smart and settings.agent.turn_text_threshold > 0
        return await simulate_call(
            caller,
            engines,
            config=settings.agent,
            vad_params=settings.vad.params(),
            realtime=args.realtime,
            tail_seconds=args.tail,
            turn_model=load_turn_model() if smart else None,
            text_turn_model=load_text_turn_model() if by_words else None,
        )

    result = asyncio.run(run())
    if args.out_wav:
        write_wav(args.out_wav, result.bot_audio)
    if args.mix_wav:
        write_wav(args.mix_wav, np.stack([result.caller_audio, result.bot_audio], axis=1))
    if args.events:
        with open(args.events, "w", encoding="utf-8") as fh:
            for event in result.typed_events:
                fh.write(event.to_json() + "\n")
    for event in result.typed_events:
        match event:
            case TranscriptReady(t=t, text=text):
                print(f"{t:8.2f}  caller: {text}")
            case BotText(t=t, text=text):
                print(f"{t:8.2f}  bot:    {text}")
            case Interrupted(t=t, latency_ms=latency_ms):
                print(f"{t:8.2f}  (caller interrupts; bot silent after {latency_ms:.1f} ms)")
            case ErrorRaised(t=t, message=message):
                print(f"{t:8.2f}  error:  {message}")
    duration = len(result.caller_audio) / 16000
    print(
        f"call ended ({result.end_reason}) after {duration:.1f} s of audio; simulated in "
        f"{result.wall_seconds:.1f} s, engines busy {result.engine_seconds:.1f} s",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from voicebot.config import load_settings
    from voicebot.server import serve

    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    try:
        settings = load_settings(**overrides)
    except (ValueError, FileNotFoundError) as exc:
        raise CliError(f"bad configuration: {exc}", EXIT_USAGE) from exc
    return serve(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description="Voice-bot gateway.")
    parser.add_argument("--version", action="version", version=f"voicebot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    vad = sub.add_parser("vad", help="speech segments of a WAV file")
    vad.add_argument("file", metavar="FILE.wav")
    vad.add_argument("--threshold", type=float, help="activation threshold (default 0.5)")
    vad.add_argument("--neg-threshold", type=float, help="deactivation threshold (default 0.35)")
    vad.add_argument("--min-silence-ms", type=int, help="silence that ends speech (default 500)")
    vad.add_argument("--min-speech-ms", type=int, help="speech that starts a segment (default 100)")
    vad.add_argument("--json", action="store_true", help='print [{"start": s, "end": s}, ...]')
    vad.set_defaults(handler=_cmd_vad)

    srv = sub.add_parser("serve", help="run the gateway (HTTP/WebSocket/WebRTC, SIP)")
    srv.add_argument("--host", help="listen address (default VOICEBOT_HOST or 127.0.0.1)")
    srv.add_argument("--port", type=int, help="HTTP port (default VOICEBOT_PORT or 8000)")
    srv.set_defaults(handler=_cmd_serve)

    sim = sub.add_parser("simulate", help="run one call from a WAV through the real agent")
    sim.add_argument("file", metavar="IN.wav", help="the caller's audio")
    sim.add_argument("--out-wav", metavar="OUT.wav", help="the bot's audio, same timeline")
    sim.add_argument("--mix-wav", metavar="MIX.wav", help="stereo: caller left, bot right")
    sim.add_argument("--events", metavar="EVENTS.jsonl", help="every event, one JSON per line")
    sim.add_argument("--realtime", action="store_true", help="pace input at 1x wall clock")
    sim.add_argument(
        "--tail",
        type=float,
        default=8.0,
        help="seconds after the input to let the bot finish (default 8)",
    )
    sim.add_argument("--stt", choices=["whisper", "openai"])
    sim.add_argument("--llm", choices=["frontdesk", "llama", "scripted", "openai"])
    sim.add_argument("--tts", choices=["piper", "espeak", "openai"])
    sim.set_defaults(handler=_cmd_simulate)

    models = sub.add_parser("models", help="list engines and verify their model files")
    models.add_argument("--json", action="store_true")
    models.add_argument("--load", action="store_true", help="also load each model once")
    models.set_defaults(handler=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Per-call numpy work is small (a 20 ms frame): BLAS worker threads only spin against
    # the model threads and can stall the event loop for tens of ms on a busy machine
    # (bench/RESULTS.md, line echo). Must be set before numpy is first imported.
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CliError as exc:
        print(f"voicebot {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a last line of defence: one clear line, not a traceback
        print(f"voicebot {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
