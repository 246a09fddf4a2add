"""Debian's Kamailio on loopback for the SIP tests: a PBX (registration mode) or a trunk
with digest authentication (outbound calls), from a config template in tests/sip/; and the
shipped dispatcher proxy, deploy/kamailio/kamailio.cfg itself, with its settings given as
pre-processor defines (`start_deployed_kamailio`), driven at run time with `kamcmd`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests import siptools

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMCMD = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
DEPLOY_CFG = Path(__file__).resolve().parent.parent / "deploy" / "kamailio" / "kamailio.cfg"


def start_kamailio(workdir: Path, port: int, password: str,
                   template: str = "kamailio.cfg.in") -> subprocess.Popen[bytes]:  # fmt: skip
    cfg = (siptools.SIP_DIR / template).read_text()
    cfg = cfg.replace("@PORT@", str(port)).replace("@PASSWORD@", password)
    path = workdir / "kamailio.cfg"
    path.write_text(cfg)
    check = subprocess.run([KAMAILIO, "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-2000:]
    log = (workdir / "kamailio.log").open("wb")
    return subprocess.Popen(
        [KAMAILIO, "-f", str(path), "-DD", "-E", "-m", "32", "-M", "8", "-Y", str(workdir),
         "-P", str(workdir / "kamailio.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its worker processes share the group: stop them all
    )  # fmt: skip


def start_deployed_kamailio(workdir: Path, defines: dict[str, str | None],
                            cfg: Path = DEPLOY_CFG) -> subprocess.Popen[bytes]:  # fmt: skip
    """Run `cfg` unmodified with `-A NAME=VALUE` for each define (`-A NAME` for None values):
    the file the tests run is the file that ships. Output goes to workdir/kamailio.log."""
    args = []
    for name, value in defines.items():
        args += ["-A", name if value is None else f"{name}={value}"]
    check = subprocess.run([KAMAILIO, "-c", "-f", str(cfg), *args], capture_output=True,
                           text=True)  # fmt: skip
    assert check.returncode == 0, check.stderr[-2000:]
    log = (workdir / "kamailio.log").open("wb")
    return subprocess.Popen(
        [KAMAILIO, "-f", str(cfg), *args, "-DD", "-E", "-m", "64", "-M", "8", "-Y",
         str(workdir), "-P", str(workdir / "kamailio.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def kamcmd(ctl_socket: str, *command: str, timeout_s: float = 5.0) -> str:
    """One RPC command over the ctl module's socket (e.g. "dispatcher.list"); its output."""
    done = subprocess.run([KAMCMD, "-s", ctl_socket, *command], capture_output=True,
                          text=True, timeout=timeout_s)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"kamcmd {' '.join(command)}: {done.stderr or done.stdout}")
    return done.stdout


def stop_kamailio(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
