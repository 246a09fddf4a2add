"""Who an outbound call may be placed to: the API's `to` and `from` checked and made
the INVITE's Request-URI and From user (nothing from the API reaches the wire unchecked).

Place in the flow: `OutboundSipCall` (telephony/outbound.py) calls these as it is built;
a ValueError there is the API's 400.
"""

from __future__ import annotations

import re

from voicebot.telephony.message import host_port_of

_NUMBER = re.compile(r"\+?[0-9*#]{1,32}")
# A SIP URI we put on the wire as given: no header/line breaking characters, no brackets.
_SIP_URI = re.compile(r"sips?:(?:[A-Za-z0-9_.!~*'()%&=+$,;?/-]+@)?[A-Za-z0-9.\-\[\]:]+"
                      r"(?:;[A-Za-z0-9_.!~*'()%=+-]+)*")  # fmt: skip
USER = re.compile(r"[A-Za-z0-9_.!~*'()%&=+$,;?/-]{1,64}")


def target_uri(to: str, domain: str | None) -> str:
    """The Request-URI for `to`: a SIP URI as given, or a number at the trunk's domain.
    Raises ValueError for anything else (nothing from the API reaches the wire unchecked)."""
    to = to.strip()
    if to.lower().startswith(("sip:", "sips:")):
        if not _SIP_URI.fullmatch(to):
            raise ValueError(f"not a SIP URI we can dial: {to[:80]!r}")
        return to
    number = re.sub(r"[\s().-]", "", to.removeprefix("tel:"))
    if not _NUMBER.fullmatch(number):
        raise ValueError(f"`to` is neither a SIP URI nor a number: {to[:80]!r}")
    if not domain:
        raise ValueError("a number needs a trunk (outbound proxy or domain) to dial it through")
    return f"sip:{number}@{domain}"



def check_caller_id(caller: str) -> str:
    """The From user, if it is one a SIP URI can carry as is."""
    if not USER.fullmatch(caller):
        raise ValueError(f"caller id not usable as a SIP user: {caller[:40]!r}")
    return caller


def host_hostport(uri: str) -> str:
    """`host[:port]` of a SIP URI (a number's domain when dialled through a proxy)."""
    host, port = host_port_of(uri)
    return host if port == 5060 else f"{host}:{port}"
