"""SIP load over K gateway processes behind Kamailio's dispatcher (issue 15, item 6).

The figures of the scale-out layout on ONE machine: how many SIP calls K = 1, 2, 3
`voicebot serve` processes carry, each and together, with < 0.5 % of the bot's RTP packets
late, when they sit behind deploy/kamailio/kamailio.cfg (unmodified, round-robin, its
settings given as `-A` defines, as tests/test_scaleout_sip.py runs it), and what the proxy
costs per call. bench/sip_load.py is the single-gateway bench; this script reuses its call
shape and measurements (SIPp scenario bench/sip_load.xml and its caller WAV, `run_sipp`,
tcpdump capture and `analyse_capture`, `/metrics` scrape, `machine()`, `busy_others`, the
gateway settings `gateway_env`: tiny.en + espeak-ng + scripted LLM, SIP echo canceller on)
and tests/cluster.py's `Member` (one gateway process on its own loopback address) and
tests/kamailio.py's `start_deployed_kamailio`.

Per row (K, N): K fresh gateways on 127.0.0.2 .. 127.0.0.(K+1), each with its own SIP port,
HTTP port, data directory (its own SQLite records store: the shared PostgreSQL of a real
cluster is not what limits media timing) and a disjoint slice of sip_load's RTP range
30000-31999 (so its capture filter and analysis apply unchanged); SIP admission ON as in
production (tick budget and late-tick rule: a gateway that cannot carry one more call answers
503 to the INVITE and to the dispatcher's OPTIONS probes, and Kamailio's failure_route tries
the next gateway; a caller gets 503 only when none takes it). Kamailio on 127.0.0.1 with a
dispatcher list of those K gateways, started once all of them are ready and probed active.
SIPp places N calls through Kamailio (sip_load's ramp, random spread, caller audio, BYE
`hold_s` after the audio started). Measured:

* calls offered (N) / answered (call set up at some gateway: their events logs) / refused
  (Kamailio answered the caller 503: "no other gateway" or "no gateway available" in its
  log, distinct Call-IDs) / completed (SIPp's successful calls); calls per gateway;
  gateway refusals that Kamailio failed over (`voicebot_calls_rejected_total`);
* bot packets late on the wire (> 20 ms behind schedule, sip_load's `analyse_capture` over
  all gateways' streams) and never sent, and the gateways' own late media ticks (sum of
  `voicebot_rtp_late_ticks_total` / packets sent over the K /metrics);
* CPU: the gateways' (utime + stime of every thread + reaped espeak-ng children, summed over
  the K processes) per call-second = % of a core per concurrent call, and while all calls
  are up; Kamailio's (every process of its session) in ms per call offered and % of a core
  per concurrent call; SIPp's; the whole machine's busy share (/proc/stat).

Verdict per row: `ok` when the late rate (worst of wire late, never sent, server ticks) is
< 0.5 % and every admitted (answered) call completed; `refused` rows are fine (admission at
work) as long as that holds. Per K the capacity is the most calls answered in an `ok` row
(calls at < 0.5 % late, total and per gateway), and the largest N with every call answered
and every N below it `ok`.

Before each row the machine must be idle (all CPUs < 25 % busy over 3 s, up to 5 min), and
with `--wait-load L` the run first waits for a load average below L with no other
benchmark busy (sip_load's rule). A full run (K = 1, 2, 3 x N = 40, 60, 80, 100, 120) takes
about 18-22 min: each row ~10 s of start-up (K gateways loading Whisper at once, Kamailio's
first probes), the 8 s ramp, 8 s spread, 21 s of audio, teardown and analysis.

    bench/cluster_load.sh --wait-load 1.0 --json /tmp/cluster.json --results bench/RESULTS.md
    bench/cluster_load.sh --quick                   # K = 1, 2 x N = 10, short calls, < 2 min
    bench/cluster_load.sh --gateways 3 --ns 60,90
    bench/cluster_load.sh --render /tmp/cluster.json --results bench/RESULTS.md
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, tests, voicebot

from bench import common
from bench import load_driver as driver
from bench import sip_load as sl
from bench.common import Log, fmt, md_table
from bench.load_driver import LIGHT
from tests import kamailio as kam
from tests.cluster import Member, free_port_on

SECTION = "## SIP load over gateways behind Kamailio"
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
RTP_SPAN = (sl.RTP_MAX - sl.RTP_MIN + 1) // len(ADDRESSES)  # each gateway's slice
FULL = dataclasses.replace(sl.FULL, ns=(40, 60, 80, 100, 120), checks=(), bisect_steps=0)
QUICK = dataclasses.replace(sl.QUICK, ns=(10,), checks=(), bisect_steps=0)
IDLE_BUSY_PCT = 25.0  # before each row: all CPUs under this, over IDLE_SAMPLE_S
IDLE_SAMPLE_S, IDLE_POLL_S, IDLE_MAX_S = 3.0, 15.0, 300.0
REFUSED = re.compile(r"\{[^}]* (\S+)\} .*(no other gateway for|no voicebot gateway available)")


# --------------------------------------------------------------------------- the stack


def session_cpu(sid: int) -> float:
    """CPU seconds of every live process (all threads) of session `sid`: Kamailio's main
    process and its workers (`start_deployed_kamailio` starts it in a session of its own).
    From /proc/PID/task/TID/schedstat (nanoseconds): a proxy's few ms per call are below the
    10 ms resolution of /proc/PID/stat's ticks."""
    total_ns = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:
                continue
            for task in (entry / "task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    total_ns += int((task / "schedstat").read_text().split()[0])
    return total_ns / 1e9


def ds_flags(ctl: str) -> dict[str, str]:
    """Destination URI -> FLAGS of `kamcmd dispatcher.list` ("AP" active, "IP" inactive)."""
    return dict(re.findall(r"URI: (\S+)\s+FLAGS: (\S+)", kam.kamcmd(ctl, "dispatcher.list")))


def wait_active(ctl: str, uris: Sequence[str], timeout_s: float = 20.0) -> None:
    """Until the dispatcher has probed every one of `uris` active."""
    deadline = time.monotonic() + timeout_s
    flags: dict[str, str] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):  # ctl not up yet
            flags = ds_flags(ctl)
        if all(flags.get(u, "").startswith("A") for u in uris):
            return
        time.sleep(0.1)
    raise TimeoutError(f"gateways not active in the dispatcher after {timeout_s} s: {flags}")


def gateway_members(work: Path, k: int) -> list[Member]:
    """K gateways (tests/cluster.py's `Member`), sip_load's settings (`gateway_env`: light
    engines, no answer delay, events log, admission by load on) on 127.0.0.2.., each its own
    ports, RTP slice, data directory and events log."""
    members = []
    for i, address in enumerate(ADDRESSES[:k]):
        name = f"gw{i + 1}"
        sip_port = free_port_on(address, socket.SOCK_DGRAM)
        http_port = free_port_on(address)
        low = sl.RTP_MIN + i * RTP_SPAN
        env = sl.gateway_env(sl.RunSpec(name, LIGHT, "shared", 0), sip_port,
                             work / f"{name}-events.jsonl")  # fmt: skip
        env.update({
            "VOICEBOT_HOST": address,
            "VOICEBOT_PORT": str(http_port),
            "VOICEBOT_SIP__BIND": address,
            "VOICEBOT_SIP__ADVERTISE_ADDRESS": address,
            "VOICEBOT_SIP__RTP_PORT_MIN": str(low),
            "VOICEBOT_SIP__RTP_PORT_MAX": str(low + RTP_SPAN - 1),
            "VOICEBOT_GATEWAY_ID": name,
            "VOICEBOT_DATA_DIR": str(work / name),
        })  # fmt: skip
        members.append(Member(name, address, http_port, sip_port, env, work / f"{name}.log"))
    return members


@contextlib.contextmanager
def stack(work: Path, k: int) -> Iterator[tuple[list[Member], subprocess.Popen[bytes], str, int]]:
    """K gateways up and ready, then Kamailio (deploy/kamailio/kamailio.cfg) in front with
    all of them probed active: (members, Kamailio's process, its ctl socket, its SIP port)."""
    members = gateway_members(work, k)
    proc = None
    try:
        for m in members:
            m.start()
        for m in members:
            m.wait_ready()
        dslist = work / "dispatcher.list"
        dslist.write_text("".join(f"1 {m.sip_uri} 8 0 duid={m.name}\n" for m in members))
        port = free_port_on("127.0.0.1", socket.SOCK_DGRAM)
        ctl = f"unix:{work}/kamailio_ctl"
        proc = kam.start_deployed_kamailio(work, {
            "LISTEN": f"udp:127.0.0.1:{port}", "DSLIST": f'"{dslist}"', "CTL_SOCKET": f'"{ctl}"',
        })  # fmt: skip
        wait_active(ctl, [m.sip_uri for m in members])
        yield members, proc, ctl, port
    finally:
        if proc is not None:
            kam.stop_kamailio(proc)
        for m in members:
            m.stop()


# --------------------------------------------------------------------------- one row


def refused_calls(kamailio_log: str) -> set[str]:
    """Call-IDs Kamailio answered 503 itself (no gateway took them)."""
    return {m.group(1) for m in map(REFUSED.search, kamailio_log.splitlines()) if m}


def run_row(k: int, n: int, cfg: sl.Config, wav: Path, base: Path, log: Log) -> dict[str, Any]:
    work = base / f"k{k}-n{n}"
    work.mkdir(parents=True)
    idle = common.idle_gate(IDLE_MAX_S, log, IDLE_BUSY_PCT, IDLE_SAMPLE_S, IDLE_POLL_S)
    taken: set[int] = set()
    media_port = sl.free_udp_ports(taken, span=4)
    local_sip, control = (sl.free_udp_ports(taken) for _ in range(2))
    load_at_start = common.loadavg()
    began = time.monotonic()
    with contextlib.ExitStack() as es:
        members, kproc, _ctl, port = es.enter_context(stack(work, k))
        startup_s = time.monotonic() - began
        cmd, ramp_s, sipp_timeout = sl.sipp_command(
            work, wav, cfg, n, cfg.spread_s, f"127.0.0.1:{port}", (local_sip, control, media_port)
        )
        log(f"K={k} N={n}: ramp {ramp_s:.1f} s, stack up in {startup_s:.1f} s, load "
            f"{load_at_start[0]:.2f}, machine {idle['busy_pct']:.0f} % busy")  # fmt: skip
        pids = [m.proc.pid for m in members if m.proc is not None]
        capture = es.enter_context(sl.tcpdump(work / "rtp.pcap"))
        samplers = [es.enter_context(driver.CpuSampler(p, 0.25, clock=time.time)) for p in pids]
        cpu_before = [sl.proc_cpu_split(p) for p in pids]
        kam_before = session_cpu(kproc.pid)
        t0 = time.time()
        code, sipp_cpu, sipp_wall = sl.run_sipp(cmd, work, sipp_timeout + 15)
        metrics = [sl.wait_idle(m.http, 30) for m in members]
        t_end = time.time()
        kam_cpu = session_cpu(kproc.pid) - kam_before
        cpu_split = []
        for p, before in zip(pids, cpu_before, strict=True):
            after = dict(before)
            with contextlib.suppress(OSError):  # a gateway died: no CPU figures for it
                after = sl.proc_cpu_split(p)
            cpu_split.append({key: after[key] - before[key] for key in after})
        alive = [m.running for m in members]
        es.close()  # samplers, tcpdump, then Kamailio and the gateways
    kam_log = (work / "kamailio.log").read_text(errors="replace")
    wire = sl.analyse_capture(
        work / "rtp.pcap", (t0, t0 + ramp_s, t0 + cfg.hold_s), capture.get("clock")
    )
    sipp = sl.sipp_stats(work / "sipp-stat.csv")
    per_gw = []
    for m, mx, split, ok, sampler in zip(members, metrics, cpu_split, alive, samplers,
                                         strict=True):  # fmt: skip
        turns = sl.analyse_events(work / f"{m.name}-events.jsonl")
        window = sl.all_up_window(sampler, t0 + ramp_s + 1.0, t0 + cfg.hold_s - 0.5)
        per_gw.append({
            "name": m.name, "address": m.address, "alive": ok, "answered": turns["calls"],
            "ended": turns["ended"], "turns": turns, "metrics": mx, "cpu_split_s": split,
            "all_up_core_pct": window["server_core_pct"], "machine_pct": window["machine_pct"],
            "errors": [ln for ln in m.log().splitlines()
                       if "ERROR" in ln or "Traceback" in ln][:10],
        })  # fmt: skip
    sent = sum(g["metrics"]["rtp_packets"].get("sent", 0.0) for g in per_gw)
    late_ticks = sum(g["metrics"]["rtp_late_ticks"] for g in per_gw)
    gw_cpu_s = sum(sum(g["cpu_split_s"].values()) for g in per_gw)
    answered = sum(g["answered"] for g in per_gw)
    completed = sipp.get("successful", 0)
    call_s = sl.admitted_call_seconds(sipp, cfg.hold_s, n)
    cores = [g["all_up_core_pct"] for g in per_gw]
    row: dict[str, Any] = {
        "k": k, "n": n, "ramp_s": ramp_s, "hold_s": cfg.hold_s, "spread_s": cfg.spread_s,
        "loadavg_at_start": load_at_start, "idle_before": idle, "stack_startup_s": startup_s,
        "wall_s": t_end - t0, "sipp_exit": code, "sipp_cpu_s": sipp_cpu, "sipp_wall_s": sipp_wall,
        "sipp": sipp, "gateways": per_gw,
        "answered": answered, "completed": completed,
        "refused": len(refused_calls(kam_log)),
        "failovers": sum(1 for ln in kam_log.splitlines() if "(failover)" in ln),
        "gateway_rejections": sum(g["metrics"]["rejected_total"] for g in per_gw),
        "late_rate_server": sl.ratio(late_ticks, sent), "late_ticks": late_ticks, "sent": sent,
        "wire": wire, "tcpdump_dropped": capture.get("dropped"),
        "call_seconds_wall": call_s,
        "gateways_cpu_s": gw_cpu_s,
        "gateways_cpu_per_call_pct": 100 * gw_cpu_s / call_s,
        "gateways_all_up_core_pct": None if None in cores else sum(cores),
        "machine_all_up_pct": per_gw[0]["machine_pct"] if per_gw else None,
        "kamailio_cpu_s": kam_cpu,
        "kamailio_ms_per_call": 1000 * kam_cpu / n,
        "kamailio_cpu_per_call_pct": 100 * kam_cpu / call_s,
        "workdir": str(work),
    }  # fmt: skip
    row["verdict"] = verdict(row)
    log(f"  -> {row['verdict']}: answered {answered}/{n} "
        f"({'/'.join(str(g['answered']) for g in per_gw)}), refused {row['refused']}, "
        f"completed {completed}, late wire {sl.f_pct(wire['bot']['late_rate'])} server "
        f"{sl.f_pct(row['late_rate_server'])}, Kamailio {row['kamailio_ms_per_call']:.2f} ms "
        "CPU per call")  # fmt: skip
    return row


def verdict(row: dict[str, Any]) -> str:
    """ok: < 0.5 % late and every admitted call completed (refusals are admission at work)."""
    if not all(g["alive"] for g in row["gateways"]) or row["completed"] < row["answered"]:
        return "failed calls"
    if row["completed"] + row["refused"] < row["n"]:
        return "failed calls"  # neither answered nor refused: lost on the way
    if sl.worst_late(row) >= sl.GOAL_LATE:
        return "late"
    return "ok"


def capacities(rows: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per K: most calls answered in an ok row, and the largest N fully answered and ok with
    every N below it ok too."""
    out = {}
    for k in sorted({r["k"] for r in rows}):
        mine = sorted((r for r in rows if r["k"] == k), key=lambda r: r["n"])
        carried = max((r["answered"] for r in mine if r["verdict"] == "ok"), default=None)
        full = [dict(r, verdict="ok" if r["verdict"] == "ok" and not r["refused"] else "no")
                for r in mine]  # fmt: skip
        out[k] = {"carried": carried, "per_gateway": None if carried is None else carried / k,
                  "all_answered_n": driver.capacity(full)}  # fmt: skip
    return out


# --------------------------------------------------------------------------- report


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = [
        "K", "N offered", "answered / refused (503) / completed", "calls per gateway",
        "failed over", "late > 20 ms (wire)", "never sent", "late ticks (server)",
        "gateways CPU per call (% of a core)", "gateways CPU all up (% of a core)",
        "Kamailio CPU per call: ms / % of a core", "machine busy all up", "SIPp CPU",
        "verdict",
    ]  # fmt: skip
    body = []
    for r in rows:
        bot = r["wire"]["bot"]
        body.append([
            r["k"], r["n"], f"{r['answered']} / {r['refused']} / {r['completed']}",
            " / ".join(str(g["answered"]) for g in r["gateways"]),
            r["failovers"], f"{bot['late']} ({sl.f_pct(bot['late_rate'])})",
            sl.f_pct(bot["missing_rate"]),
            f"{r['late_ticks']:.0f} ({sl.f_pct(r['late_rate_server'])})",
            fmt(r["gateways_cpu_per_call_pct"], 2), fmt(r["gateways_all_up_core_pct"], 0),
            f"{r['kamailio_ms_per_call']:.2f} / {r['kamailio_cpu_per_call_pct']:.3f}",
            f"{fmt(r['machine_all_up_pct'], 0)} %",
            fmt(100 * r["sipp_cpu_s"] / r["sipp_wall_s"], 0) if r["sipp_wall_s"] else "-",
            f"**{r['verdict']}**" if r["verdict"] == "ok" else r["verdict"],
        ])  # fmt: skip
    return md_table(header, body)


def reading(res: dict[str, Any]) -> str:
    caps = {int(k): v for k, v in res["capacity"].items()}
    rows = res["rows"]
    parts = []
    for k, c in sorted(caps.items()):
        if c["carried"] is None:
            parts.append(f"K = {k}: no row within 0.5 % late")
        else:
            parts.append(f"K = {k}: {c['carried']} calls on time ({c['per_gateway']:.1f} per "
                         f"gateway)")  # fmt: skip
    kam = [r["kamailio_ms_per_call"] for r in rows if r["n"]]
    kam_pct = [r["kamailio_cpu_per_call_pct"] for r in rows]
    gw = [r["gateways_cpu_per_call_pct"] for r in rows if r["verdict"] == "ok"]
    text = (
        "Most calls carried with < 0.5 % late bot packets and every admitted call completed: "
        + "; ".join(parts)
        + ". "
    )
    best_k, best = max(((k, c["carried"] or 0) for k, c in caps.items()), key=lambda x: x[1])
    one = caps.get(1, {}).get("carried") or 0
    if len(caps) > 1 and one:
        busy = [
            r["machine_all_up_pct"]
            for r in rows
            if r["k"] == best_k and r["verdict"] == "ok" and r["answered"] == best
        ]
        text += (
            f"The best, K = {best_k}, carried {best / one:.2f}x the calls of one gateway on "
            f"this {res['machine']['nproc']}-CPU machine"
            + (f" (machine {busy[0]:.0f} % busy while all were up)" if busy and busy[0] else "")
            + ": gateways, SIPp, tcpdump and the proxy share the same cores, so the total is "
            "bounded by them whatever K. "
        )
    if gw:
        text += f"Gateways' CPU per call in the ok rows: {min(gw):.2f}-{max(gw):.2f} % of a core. "
    if kam:
        text += (
            f"Kamailio (signalling only: INVITE, ACK, BYE and their replies, plus its OPTIONS "
            f"probes) used {min(kam):.2f}-{max(kam):.2f} ms CPU per call offered, "
            f"{min(kam_pct):.3f}-{max(kam_pct):.3f} % of a core per concurrent call: the proxy "
            "is not what limits capacity. "
        )
    refused = sum(r["refused"] for r in rows)
    if refused:
        text += (
            f"{refused} calls were refused with 503 in all (no gateway would admit them): "
            "admission kept the admitted calls on time where the verdict is ok."
        )
    return text.strip()


def render(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    rows = sorted(res["rows"], key=lambda r: (r["k"], r["n"]))
    lines = [SECTION, ""]
    lines.append(
        f"Run {res['started_utc']} by `bench/cluster_load.sh{' --quick' if res['quick'] else ''}`"
        f" in {res['total_seconds']:.0f} s. Machine: {m['nproc']} CPUs, {m['cpu']}; load "
        f"average at start {' / '.join(f'{x:.2f}' for x in res['loadavg_at_start'])}, at end "
        f"{' / '.join(f'{x:.2f}' for x in res['loadavg_at_end'])}"
        + (f" ({res['load_wait']})" if res.get("load_wait") else "")
        + f". SIPp {m['sipp']}, Kamailio {res['kamailio_version']}, Python {m['python']}."
    )
    if res["quick"]:
        lines[-1] += " A smoke run: its figures say nothing about capacity."
    lines += [
        "",
        f"K `voicebot serve` processes on 127.0.0.2 .. 127.0.0.(K+1) (each its own SIP port, "
        f"RTP ports, records store; {LIGHT.label}, scripted LLM, SIP echo canceller on, "
        "`OPENBLAS_NUM_THREADS=1`, admission by load on: 503 when a gateway predicts it cannot "
        "carry one more call) behind `deploy/kamailio/kamailio.cfg` as shipped (round-robin, "
        "OPTIONS probes every 2 s, failover on 503), all on the same machine with SIPp, "
        "tcpdump and this script. Each call as in bench/sip_load.py: INVITE through the "
        f"proxy, INVITEs spread over min({cfg['ramp_max_s']:.0f} s, N / {cfg['min_cps']:.0f} "
        f"per s), the caller's audio after a random 0-{cfg['spread_s']:.0f} s pause, BYE "
        f"{cfg['hold_s']:.0f} s later. Fresh gateways and proxy per row, machine idle before "
        "each. Answered = set up at a gateway; refused = Kamailio answered 503 (no gateway "
        "took it); failed over = INVITEs a gateway refused and the failure_route sent to the "
        "next. Late = bot RTP packet > 20 ms behind its schedule (tcpdump on `lo`, all "
        "gateways' streams); never sent = packets due but skipped; late ticks = the gateways' "
        "own count. Gateways CPU per call = CPU seconds of all K processes / call-seconds (% "
        "of a core per concurrent call); Kamailio = all its processes, per call offered.",
        "",
        table(rows),
        "",
        reading(res),
    ]
    notes = []
    for r in rows:
        tag = f"K={r['k']} N={r['n']}"
        if r["sipp"].get("failed_kinds"):
            notes.append(f"{tag}: SIPp failures {r['sipp']['failed_kinds']}")
        if r["tcpdump_dropped"]:
            notes.append(f"{tag}: tcpdump dropped {r['tcpdump_dropped']} packets")
        for g in r["gateways"]:
            if g["errors"]:
                notes.append(f"{tag} {g['name']}: {g['errors'][0][:160]}")
            if not g["alive"]:
                notes.append(f"{tag} {g['name']}: the process died")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def kamailio_version() -> str:
    out = subprocess.run([kam.KAMAILIO, "-v"], capture_output=True, text=True).stdout
    match = re.search(r"kamailio (\S+)", out)
    return match.group(1) if match else out.strip()[:40]


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    parser = driver.load_parser(__doc__, SECTION)
    parser.add_argument("--gateways", type=ints, help="comma-separated K (default 1,2,3)")
    parser.add_argument("--ns", type=ints, help="comma-separated N (default 40,60,80,100,120)")
    parser.add_argument("--hold", type=float, help="seconds from the caller's audio to BYE")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(args.render, render, args.results)
    cfg = QUICK if args.quick else FULL
    ks = args.gateways or ((1, 2) if args.quick else (1, 2, 3))
    ns = args.ns or cfg.ns
    if args.hold:
        cfg = dataclasses.replace(cfg, hold_s=args.hold)
    if max(ks) > len(ADDRESSES) or min(ks) < 1:
        raise SystemExit(f"--gateways: 1 .. {len(ADDRESSES)}")
    for tool in (sl.SIPP, sl.TCPDUMP, kam.KAMAILIO, kam.KAMCMD):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} not found")
    log = common.StderrLog()
    load_wait = None
    if args.wait_load is not None:
        load, waited, quiet = common.wait_for_load(args.wait_load, 20 * 60, log, sl.busy_others)
        limit = f"{args.wait_load:g}"
        load_wait = (
            f"waited {waited:.0f} s for load < {limit}" if quiet
            else f"load {load:.2f} after waiting {waited:.0f} s for < {limit}; ran anyway"
        )  # fmt: skip
        log.restart()
    res: dict[str, Any] = {
        "started_utc": common.utc_now(),
        "quick": args.quick,
        "config": asdict(cfg),
        "gateways": list(ks),
        "ns": list(ns),
        "machine": sl.machine(),
        "kamailio_version": kamailio_version(),
        "loadavg_at_start": common.loadavg(),
        "other_processes_at_start": list(sl.other_processes().values()),
        "load_wait": load_wait,
        "definitions": {"late_s": sl.LATE_S, "goal_late": sl.GOAL_LATE, "rtp_span": RTP_SPAN},
    }
    base = Path(tempfile.mkdtemp(prefix="cluster_load-"))
    try:
        wav = base / "caller.wav"
        res["caller"] = sl.make_caller_wav(wav, cfg.hold_s + 1.0, log)
        rows = []
        for k in ks:
            for n in ns:
                rows.append(run_row(k, n, cfg, wav, base, log))
        res["rows"] = rows
        res["capacity"] = capacities(rows)
    finally:
        if args.keep:
            log(f"work directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return common.finish(res, render, args, log)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
