"""SIP load with call records, recordings and webhooks on: do the media keep their timing?

Runs bench/sip_load.py's calls (SIPp, N concurrent G.711 calls with speech, a real
`voicebot serve` with tiny.en + espeak-ng + the scripted LLM, echo canceller on) at each N
twice: with records off, and with records + stereo recordings + webhooks to a local
receiver (an HTTP server in this process that answers 204 and counts). For the second it
reads the run's SQLite file afterwards: every admitted call must have its record closed,
its turns and its recording, and the receiver every call's `call.ended`.

    bench/records_load.py --ns 60 --json /tmp/records.json --results bench/RESULTS.md
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, tests, voicebot

from bench import common, sip_load
from bench import load_driver as driver
from bench.common import fmt, md_table

SECTION = "## SIP load with call records and webhooks"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OFF = (("VOICEBOT_RECORDS__ENABLED", "false"),)


class Sink:
    """Counts webhook deliveries by type; answers 204 to each."""

    def __init__(self) -> None:
        self.by_type: Counter[str] = Counter()
        self.ended: set[str] = set()
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with sink._lock:
                    sink.by_type[body["type"]] += 1
                    if body["type"] == "call.ended":
                        sink.ended.add(body["data"]["call_id"])
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    @contextlib.contextmanager
    def running(self) -> Iterator[Sink]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()


def stored(work: Path) -> dict[str, Any]:
    """What the run's records database and recordings directory hold."""
    db = work / "data" / "voicebot.db"
    if not db.exists():
        return {}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        calls = conn.execute("select count(*), sum(ended_at is not null), "
                             "sum(recording_path is not null) from calls").fetchone()  # fmt: skip
        turns = conn.execute("select count(*) from turns").fetchone()[0]
        events = conn.execute("select count(*) from call_events").fetchone()[0]
        pending = conn.execute(
            "select count(*) from webhook_outbox where status != 'delivered'").fetchone()[0]
    recordings = list((work / "data" / "recordings").rglob("*.wav"))
    return {
        "calls": calls[0], "ended": calls[1] or 0, "with_recording": calls[2] or 0,
        "turns": turns, "events": events, "webhooks_undelivered": pending,
        "recording_files": len(recordings),
        "recording_mb": sum(p.stat().st_size for p in recordings) / 1e6,
    }  # fmt: skip


def run(n: int, label: str, env: tuple[tuple[str, str], ...], cfg: sip_load.Config,
        wav: Path, base: Path, log: common.StderrLog) -> dict[str, Any]:  # fmt: skip
    spec = sip_load.RunSpec(label, driver.LIGHT, "shared", n, env)
    return sip_load.run_one(spec, cfg, wav, base, log)


def render(res: dict[str, Any]) -> str:
    rows = []
    for r in res["runs"]:
        bot = r["wire"]["bot"]
        s = r.get("stored") or {}
        hooks = r.get("webhooks")
        rows.append([
            r["label"], r["n"], f"{r['sipp'].get('successful', 0)}/{r['n']}",
            sip_load.f_pct(r["late_rate_server"]), sip_load.f_pct(bot["late_rate"]),
            fmt(r["cpu_per_call_pct"], 2),
            f"{s.get('ended', 0)}/{s.get('calls', 0)}" if s else "-",
            f"{s.get('with_recording', 0)} ({fmt(s.get('recording_mb'), 0)} MB)" if s else "-",
            s.get("turns", "-") if s else "-",
            f"{len(hooks['ended'])} ended, {sum(hooks['by_type'].values())} in all"
            if hooks else "-",
        ])  # fmt: skip
    machine = res["machine"]
    return "\n".join([
        SECTION, "",
        f"Machine: {machine['cpu']}, {machine.get('nproc', '?')} CPUs. "
        f"{res['started_utc']}. Calls as in \"SIP load\" (SIPp, G.711 with speech, "
        f"{sip_load.LIGHT.label}, echo canceller on, {res['hold_s']:.0f} s each), once with "
        "records off and once with records, stereo WAV recordings and webhooks to a receiver "
        "on loopback (every event of every call POSTed, signed). Late = bot packets over "
        "one frame late (server ticks, and on the wire by tcpdump).", "",
        md_table(["run", "N", "SIPp calls ok", "late (server)", "late (wire)",
                  "CPU % of a core per call", "records closed", "recordings",
                  "turns stored", "webhooks received"], rows),
        "",
        "SIPp calls ok = calls admitted; the others were refused at once with 503 by the "
        "gateway's admission (the CPU budget, `server.cpu_budget` x CPUs over the cost per "
        "call, the `server.cpu_per_call` prior on a fresh process; and `sip.tick_budget`). "
        "CPU per call is the server's CPU over the admitted calls' seconds (refusals cost "
        "some too). Reading: what records, recordings and webhooks cost is the difference "
        "between the two rows of one N; the media path is unaffected where the late "
        "columns match.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = driver.load_parser(__doc__, SECTION)
    parser.add_argument("--ns", default="60", help="comma-separated N (default 60)")
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(args.render, render, args.results)
    cfg = sip_load.QUICK if args.quick else sip_load.FULL
    ns = [5] if args.quick else [int(x) for x in args.ns.split(",")]
    log = common.StderrLog()
    if args.wait_load is not None:
        common.wait_for_load(args.wait_load, 20 * 60, log, sip_load.busy_others)
        log.restart()
    res: dict[str, Any] = {"started_utc": common.utc_now(), "machine": sip_load.machine(),
                           "hold_s": cfg.hold_s, "runs": []}  # fmt: skip
    base = Path(tempfile.mkdtemp(prefix="records_load-"))
    try:
        wav = base / "caller.wav"
        sip_load.make_caller_wav(wav, cfg.hold_s + 1.0, log)
        for n in ns:
            res["runs"].append(run(n, "records off", OFF, cfg, wav, base, log))
            sink = Sink()
            on = (("VOICEBOT_WEBHOOKS__URLS", json.dumps([sink.url])),
                  ("VOICEBOT_WEBHOOKS__SECRET", SECRET))  # fmt: skip
            with sink.running():
                row = run(n, "records + recordings + webhooks", on, cfg, wav, base, log)
            row["stored"] = stored(Path(row["workdir"]))
            row["webhooks"] = {"by_type": dict(sink.by_type), "ended": sorted(sink.ended)}
            res["runs"].append(row)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return common.finish(res, render, args, log)


if __name__ == "__main__":
    raise SystemExit(main())
