"""SIP messages (RFC 3261 section 7): parsing and serialising requests and responses.

Only what a bot gateway needs, strictly: a start line, header fields (compact forms of
section 7.3.3 expanded, multiple values kept in order), and a body whose length comes
from Content-Length (section 18.3: over UDP a missing Content-Length means "the rest of
the datagram"; a longer claim than the datagram holds is an error). Anything malformed
raises `SipParseError`, which the endpoint answers with 400 when it can.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 65_535
SIP_VERSION = "SIP/2.0"

# RFC 3261 section 7.3.3 compact forms.
COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via",
    "o": "Event", "r": "Refer-To", "b": "Referred-By", "u": "Allow-Events",
}  # fmt: skip
_CANONICAL = {
    name.lower(): name
    for name in (
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Type",
        "Content-Length", "Allow", "Supported", "User-Agent", "Server", "Retry-After",
        "WWW-Authenticate", "Authorization", "Proxy-Authenticate", "Proxy-Authorization",
        "Expires", "Refer-To", "Referred-By", "Event", "Subscription-State", "Accept",
        "Record-Route", "Route", "Require", "Unsupported", "Reason", "Warning",
    )
}  # fmt: skip
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
# Section 25.1 Request-Line = Method SP Request-URI SP SIP-Version CRLF. Runs of SP between
# the elements and after the version are accepted: RFC 4475 3.1.2.9 and 3.1.2.10 allow a
# liberal element to ignore them; an URI with a space inside (3.1.2.8) still fails.
_REQUEST_LINE = re.compile(r"^([A-Za-z0-9\-.!%*_+`'~]+) +(\S+) +(SIP/\d+\.\d+) *$")
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase: exactly three digits, then SP
# (RFC 4475 3.1.2.19: "4294967301" is not 429); the reason phrase may be empty (3.1.1.13).
_STATUS_LINE = re.compile(r"^(SIP/\d+\.\d+) ([1-6]\d\d)(?: (.*))?$")
# Section 19.1.1 / RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":". A
# Request-URI in <> (RFC 4475 3.1.2.7) is no URI at all: 400, not 416.
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+\-.]*:")
# The methods of RFC 3261 and its extensions. A request whose CSeq method differs from its
# start line is malformed (400), except that an unknown method is answered 501 first
# (RFC 4475 3.1.2.18: 501 is the better, future-proof answer).
STANDARD_METHODS = (
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "NOTIFY", "SUBSCRIBE",
    "PUBLISH", "MESSAGE", "REFER", "UPDATE", "PRACK",
)  # fmt: skip
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "²" and "٣"
# Section 20: headers that appear once (a second Call-ID or CSeq makes the message ambiguous).
_SINGLE = ("Call-ID", "From", "To", "CSeq", "Content-Length", "Content-Type", "Max-Forwards")
# Section 20.42 via-parm: protocol / version / transport, sent-by, then ;params (a param is
# a token, with =value if any); whitespace around the separators is allowed (RFC 4475 3.1.1.1).
_VIA_PARM = re.compile(
    r"SIP\s*/\s*2\.0\s*/\s*[A-Za-z]+\s+[^\s;,]+"
    r"(\s*;\s*[A-Za-z0-9\-.!%*_+`'~]+(\s*=\s*(\"[^\"]*\"|[^\s;,\"]+))?)*"
)
MAX_CSEQ = 2**31 - 1  # section 8.1.1.5: less than 2**31

REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 407: "Proxy Authentication Required", 408: "Request Timeout",
    406: "Not Acceptable", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "Version Not Supported",
}  # fmt: skip


class SipParseError(ValueError):
    """A message that is not valid SIP; the text goes in the response, `status` is its code
    (400, or 505 for another SIP version: RFC 3261 section 21.5.6)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


def ascii_int(text: str, what: str, limit: int | None = None) -> int:
    """A non-negative decimal of ASCII digits, else SipParseError (never ValueError)."""
    value = text.strip()
    if not _DIGITS.fullmatch(value) or (limit is not None and int(value) > limit):
        raise SipParseError(f"bad {what} {text[:40]!r}")
    return int(value)


def new_tag() -> str:
    """A To/From tag (section 19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(6)


def canonical(name: str) -> str:
    lower = name.strip().lower()
    if lower in COMPACT:
        return COMPACT[lower]
    return _CANONICAL.get(lower, "-".join(p.capitalize() for p in lower.split("-")))


@dataclass
class SipMessage:
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        key = canonical(name)
        for k, v in self.headers:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = canonical(name)
        return [v for k, v in self.headers if k == key]

    def set(self, name: str, value: str) -> None:
        key = canonical(name)
        self.headers = [(k, v) for k, v in self.headers if k != key]
        self.headers.append((key, value))

    def add(self, name: str, value: str) -> None:
        self.headers.append((canonical(name), value))

    @property
    def call_id(self) -> str:
        return self.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        raw = self.get("CSeq") or ""
        parts = raw.split()
        if len(parts) != 2:
            raise SipParseError(f"bad CSeq {raw[:40]!r}")
        # Methods are case-sensitive (section 7.1): "invite" is not INVITE.
        return ascii_int(parts[0], "CSeq", MAX_CSEQ), parts[1]

    @property
    def top_via(self) -> str:
        vias = self.get_all("Via")
        if not vias:
            raise SipParseError("no Via header")
        return vias[0].split(",")[0].strip()

    @property
    def branch(self) -> str:
        # Section 25.1: EQUAL = SWS "=" SWS (RFC 4475 3.1.1.1 puts spaces around it).
        match = re.search(r";\s*branch\s*=\s*([^;,\s]+)", self.top_via, re.I)
        return match.group(1) if match else ""

    def _serialise(self, start_line: str) -> bytes:
        lines = [start_line]
        lines += [f"{k}: {v}" for k, v in self.headers if k != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class SipRequest(SipMessage):
    method: str = ""
    uri: str = ""

    def to_bytes(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri} {SIP_VERSION}")


@dataclass
class SipResponse(SipMessage):
    status: int = 200
    reason: str = "OK"

    def to_bytes(self) -> bytes:
        return self._serialise(f"{SIP_VERSION} {self.status} {self.reason}")


def parse_message(data: bytes) -> SipRequest | SipResponse:
    """Parse one datagram."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("message too large")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")  # tolerate bare LF (section 7.5 advises)
        if not sep:
            raise SipParseError("no blank line after the headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("headers are not UTF-8") from exc
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)  # section 7.5: ignore leading CRLFs (keep-alives)
    if not lines:
        raise SipParseError("empty message")
    start = lines[0].strip()
    message: SipRequest | SipResponse
    if m := _REQUEST_LINE.match(start):
        method, uri, version = m.groups()
        if version != SIP_VERSION:  # RFC 4475 3.1.2.16: SIP/7.0 gets 505
            raise SipParseError(f"unsupported version {version[:12]}", status=505)
        if not _URI_SCHEME.match(uri):
            raise SipParseError(f"bad Request-URI {uri[:60]!r}")
        message = SipRequest(method=method, uri=uri)
    elif m := _STATUS_LINE.match(start):
        version, status, reason = m.groups()
        message = SipResponse(status=int(status), reason=reason or "")
    else:
        raise SipParseError(f"bad start line {start[:80]!r}")
    current: list[str] | None = None
    for line in lines[1:]:
        if not line:
            continue
        # A bare CR would end the line in our responses (header injection). NUL is allowed
        # only as a quoted-pair (section 25.1: quoted-pair = "\\" (%x00-09 / %x0B-0C /
        # %x0E-7F)), as in RFC 4475 3.1.1.2's display name; anywhere else it is an error.
        if "\r" in line or "\x00" in line.replace("\\\x00", ""):
            raise SipParseError("CR or NUL inside a header line")
        if line[0] in " \t":  # section 7.3.1: header folding
            if current is None:
                raise SipParseError("continuation line before any header")
            current[1] = f"{current[1]} {line.strip()}".lstrip()  # "To:" CRLF SP value
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name.strip()):
            raise SipParseError(f"bad header line {line[:80]!r}")
        current = [canonical(name), value.strip()]
        message.headers.append(current)  # type: ignore[arg-type]
    message.headers = [(k, v) for k, v in message.headers]  # freeze folded pairs
    for name in _SINGLE:
        if len(message.get_all(name)) > 1:
            raise SipParseError(f"more than one {name} header")
    for name in ("From", "To", "Contact"):
        for value in message.get_all(name):
            if not _quotes_balanced(value):  # RFC 4475 3.1.2.6
                raise SipParseError(f"unterminated quoted string in {name}")
    for via in message.get_all("Via"):
        for part in via.split(","):
            if not _VIA_PARM.fullmatch(part.strip()):
                raise SipParseError(f"bad Via {part.strip()[:60]!r}")
    length_header = message.get("Content-Length")
    if length_header is not None:
        length = ascii_int(length_header, "Content-Length")
        if length > len(body):
            raise SipParseError(f"Content-Length {length} but only {len(body)} body bytes")
        body = body[:length]
    message.body = body
    for required in ("Via", "From", "To", "Call-ID", "CSeq"):
        if message.get(required) is None:
            raise SipParseError(f"missing {required} header")
    _, cseq_method = message.cseq
    if (
        isinstance(message, SipRequest)
        and cseq_method != message.method
        and message.method in STANDARD_METHODS  # an unknown one gets its 501 (rules.py)
    ):
        raise SipParseError(f"CSeq method {cseq_method[:40]} does not match {message.method}")
    return message


def _quotes_balanced(value: str) -> bool:
    """Every quoted-string closed (section 25.1: inside one, a backslash escapes the next
    character, so an escaped quote does not close it)."""
    inside = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif inside and char == "\\":
            escaped = True
        elif char == '"':
            inside = not inside
    return not inside


def response_to(
    request: SipRequest, status: int, reason: str | None = None, to_tag: str | None = None
) -> SipResponse:
    """A response with the headers section 8.2.6.2 copies from the request. Every response
    but 100 Trying carries a To tag (section 8.2.6.2 MUST): `to_tag` if the request's To
    has none (the dialog's, for INVITE), else a fresh one."""
    response = SipResponse(status=status, reason=reason or REASONS.get(status, "Unknown"))
    for via in request.get_all("Via"):
        response.add("Via", via)
    to = request.get("To") or ""
    if status > 100 and tag_of(to) is None:
        to = f"{to};tag={to_tag or new_tag()}"
    response.add("From", request.get("From") or "")
    response.add("To", to)
    response.add("Call-ID", request.call_id)
    response.add("CSeq", request.get("CSeq") or "")
    if request.method == "INVITE" and 100 < status < 300:
        # Section 12.1.1: dialog-creating responses echo the proxies' Record-Route.
        for route in request.get_all("Record-Route"):
            response.add("Record-Route", route)
    return response


def tag_of(header: str) -> str | None:
    """The tag parameter of a From/To value (`tag = x` with spaces too: section 25.1 EQUAL,
    RFC 4475 3.1.1.1), from the header's parameters, not from inside its <URI>."""
    params = header.rsplit(">", 1)[1] if ">" in header else header
    match = re.search(r";\s*tag\s*=\s*([^;>\s,]+)", params, re.I)
    return match.group(1) if match else None


def uri_of(header: str) -> str:
    """The URI inside a From/To/Contact value (name-addr or addr-spec)."""
    match = re.search(r"<([^>]*)>", header)
    if match:
        return match.group(1).strip()  # "< sip:a@b >": RFC 4475 3.1.2.14, taken liberally
    return header.split(";")[0].strip()


def host_port_of(uri: str, default_port: int = 5060) -> tuple[str, int]:
    """(host, port) of a SIP URI such as sip:user@host:port;params."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    rest = rest.split(";")[0].split("?")[0]
    hostport = rest.rsplit("@", 1)[-1]
    if hostport.startswith("["):  # IPv6 reference
        host, _, port = hostport[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = hostport.partition(":")
    return host, int(port) if _DIGITS.fullmatch(port) and int(port) < 65536 else default_port
