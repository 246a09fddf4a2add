"""Debian's Kamailio on loopback for the SIP tests: a PBX (registration mode) or a trunk
with digest authentication (outbound calls), from a config template in tests/sip/."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests import siptools

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"


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


def stop_kamailio(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
