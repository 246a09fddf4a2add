"""The Refer-To of a transfer with context: headers embedded in the target URI.

A blind transfer (RFC 3515) tells the caller's side to call `target`. What the human agent's
side should know of the call travels inside that URI as *embedded headers* (RFC 3261
section 19.1.1: `sip:queue@pbx?User-to-User=...&X-Queue=billing`): the transferee copies
them into its INVITE to the target (RFC 3261 section 19.1.5), so the agent's PBX or desktop
gets them with the ringing call.

- `User-to-User` (RFC 7433): the voicebot call id, hex-encoded (section 4.1:
  `<hex>;encoding=hex;purpose=<package>`), so the agent's side can fetch the live record
  (`GET /v1/calls/{id}`: turns so far) while the call rings. The purpose is an application
  package name (section 4.1, RFC 7434 for `isdn-uui`); ours is configurable.
- the configured extra headers (`[sip] transfer_headers`, e.g. `X-Queue = "billing"`).

Escaping (RFC 3261 section 19.1.1, `hname` / `hvalue`): every character outside
`unreserved` (alphanumerics and `-_.!~*'()`) and `hnv-unreserved` (`[]/?:+$`) is
%-escaped, so `;` `=` `&` `@` `,`, spaces and non-ASCII (as UTF-8) never end a header or
the URI early; an embedded header's own parameters (`;encoding=hex`) are escaped too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

# RFC 3261 section 19.1.1 / 25.1: hnv-unreserved plus the marks of `unreserved` (quote()
# always keeps ALPHA / DIGIT / "_.-~").
_HEADER_SAFE = "!*'()[]/?:+$"
UUI_HEADER = "User-to-User"


def escape_header_part(text: str) -> str:
    """One `hname` or `hvalue`, %-escaped as section 19.1.1 requires (UTF-8 octets)."""
    return quote(text, safe=_HEADER_SAFE, encoding="utf-8")


def uui_value(data: bytes, purpose: str) -> str:
    """An RFC 7433 section 4.1 User-to-User value: the data in hex with its parameters."""
    value = f"{data.hex()};encoding=hex"
    return f"{value};purpose={purpose}" if purpose else value


def embed_headers(uri: str, headers: Iterable[tuple[str, str]]) -> str:
    """`uri` with `headers` appended as embedded headers (after any it already has).

    `uri` is a bare SIP URI (no angle brackets, no display name): a target given as
    `<sip:x@y>` is unwrapped first."""
    bare = uri.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1]
    parts = [f"{escape_header_part(name)}={escape_header_part(value)}" for name, value in headers]
    if not parts:
        return bare
    separator = "&" if "?" in bare else "?"
    return bare + separator + "&".join(parts)


def refer_to(
    target: str, call_id: str, extra: Mapping[str, str], *, uui: bool = True,
    uui_purpose: str = "",
) -> str:  # fmt: skip
    """The Refer-To header value (in angle brackets, RFC 3515 section 2.1: a URI with
    headers must be in a name-addr) for a transfer of `call_id` to `target`."""
    headers: list[tuple[str, str]] = []
    if uui:
        headers.append((UUI_HEADER, uui_value(call_id.encode("utf-8"), uui_purpose)))
    headers.extend((name, value) for name, value in extra.items())
    return f"<{embed_headers(target, headers)}>"


def embedded_headers(uri: str) -> list[tuple[str, str]]:
    """The embedded headers of a URI, unescaped (the inverse of `embed_headers`; tests and
    logs)."""
    bare = uri.strip().removeprefix("<").removesuffix(">")
    if "?" not in bare:
        return []
    out = []
    for part in bare.split("?", 1)[1].split("&"):
        name, _, value = part.partition("=")
        out.append((unquote(name, encoding="utf-8"), unquote(value, encoding="utf-8")))
    return out
