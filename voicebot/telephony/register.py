"""Registration mode: the bot REGISTERs to a PBX as an extension (RFC 3261 section 10),
answering digest challenges (RFC 2617 / RFC 3261 section 22.4), and refreshes before the
binding expires. Calls to the extension then arrive as INVITEs from the PBX.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets

from voicebot.config.settings import SipSettings
from voicebot.telephony.message import SipRequest, SipResponse, new_tag, uri_of
from voicebot.telephony.ua import SipEndpoint, new_branch

log = logging.getLogger("voicebot.telephony.register")


def parse_challenge(header: str) -> dict[str, str]:
    if not header.lower().startswith("digest"):
        raise ValueError(f"not a digest challenge: {header[:40]!r}")
    return {k.lower(): v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]+)', header[6:])}


def digest_authorization(
    challenge: dict[str, str], method: str, uri: str, username: str, password: str
) -> str:
    """The Authorization value answering `challenge` (MD5, qop=auth or none)."""
    realm, nonce = challenge.get("realm", ""), challenge.get("nonce", "")
    algorithm = challenge.get("algorithm", "MD5")
    if algorithm.upper() not in ("MD5",):
        raise ValueError(f"unsupported digest algorithm {algorithm}")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    ha1 = md5(f"{username}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    parts = [f'username="{username}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"',
             f"algorithm={algorithm}"]  # fmt: skip
    qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        cnonce, nc = secrets.token_hex(8), "00000001"
        response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        parts += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    parts.append(f'response="{response}"')
    if "opaque" in challenge:
        parts.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(parts)


class Registration:
    """Keeps the bot registered: REGISTER now, again at 80 % of each granted expiry, and
    every 30 s after a failure. Needs only the SIP endpoint and where it is reachable."""

    def __init__(self, endpoint: SipEndpoint, sip: SipSettings, address: str, port: int) -> None:
        self.endpoint = endpoint
        self.sip = sip
        self.address = address
        self.port = port
        self.registered = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_registered(), name="sip-register")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _keep_registered(self) -> None:
        call_id = f"{secrets.token_hex(8)}@{self.address}"
        cseq = 1
        while True:
            try:
                expires, cseq = await self.register_once(call_id, cseq)
                self.registered = True
                log.info("registered as %s for %d s", self.sip.username, expires)
                await asyncio.sleep(max(10.0, expires * 0.8))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.registered = False
                log.warning("registration failed: %s; retrying in 30 s", exc)
                await asyncio.sleep(30)

    async def register_once(self, call_id: str, cseq: int) -> tuple[int, int]:
        """One REGISTER (answering a challenge if asked); returns (granted expiry, next
        cseq)."""
        sip = self.sip
        registrar = sip.register_uri or ""
        host, _, port = uri_of(registrar).removeprefix("sip:").partition(":")
        addr = (host, int(port or 5060))
        aor = f"sip:{sip.username}@{host}"
        tag = new_tag()
        authorization: str | None = None
        for _ in range(2):
            request = SipRequest(
                method="REGISTER", uri=f"sip:{host}" + (f":{port}" if port else "")
            )
            via = f"SIP/2.0/UDP {self.address}:{self.port};branch={new_branch()};rport"
            request.add("Via", via)
            request.add("Max-Forwards", "70")
            request.add("From", f"<{aor}>;tag={tag}")
            request.add("To", f"<{aor}>")
            request.add("Call-ID", call_id)
            request.add("CSeq", f"{cseq} REGISTER")
            request.add("Contact", f"<sip:{sip.username}@{self.address}:{self.port}>")
            request.add("Expires", str(sip.register_expires))
            request.add("User-Agent", sip.user_agent)
            if authorization:
                request.add("Authorization", authorization)
            cseq += 1
            response: SipResponse = await self.endpoint.request(request, addr, timeout=10.0)
            if response.status in (401, 407) and authorization is None and sip.password:
                header = (
                    response.get("WWW-Authenticate") or response.get("Proxy-Authenticate") or ""
                )
                authorization = digest_authorization(
                    parse_challenge(header), "REGISTER", request.uri, sip.username or "",
                    sip.password,
                )  # fmt: skip
                continue
            if response.status >= 300:
                raise RuntimeError(f"REGISTER refused: {response.status} {response.reason}")
            expires = sip.register_expires
            contact = response.get("Contact") or ""
            match = re.search(r"expires=(\d+)", contact) or re.match(
                r"(\d+)", response.get("Expires") or ""
            )
            if match:
                expires = int(match.group(1))
            return expires, cseq
        raise RuntimeError("REGISTER: authentication failed")
