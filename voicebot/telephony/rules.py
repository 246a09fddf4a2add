"""What a UAS checks of a request before it acts on it (RFC 3261 section 8.2), in the
RFC's order: the method (8.2.1: 405 with Allow, 501 for unknown ones), the Request-URI's
scheme (8.2.2.1: 416), required extensions (8.2.2.3: 420 with Unsupported, none being
supported here), the body's type (8.2.3: 415 with Accept) and, for an INVITE, whether the
caller accepts the SDP we would answer with (21.4.7: 406). The gateway dispatches only the
requests that pass; dialog matching (481, 482) comes after, with the calls.
"""

from __future__ import annotations

from voicebot.telephony.message import SipRequest, SipResponse, response_to
from voicebot.telephony.ua import ALLOW_HEADER, ALLOWED_METHODS, KNOWN_METHODS

URI_SCHEMES = ("sip", "tel")  # sips needs TLS, which this UDP endpoint does not offer
# The body types these methods may carry (others get 415 with these in Accept); bodies of
# other methods (an OPTIONS with SDP, a BYE with a Reason body) are accepted and ignored.
BODY_TYPES = {
    "INVITE": ("application/sdp",),
    "INFO": ("application/dtmf-relay", "application/dtmf"),
    "NOTIFY": ("message/sipfrag",),
}
_SDP_ACCEPTED = {"application/sdp", "application/*", "*/*"}


def media_type(value: str) -> str:
    """`type/subtype` of a Content-Type or Accept entry, lower case, parameters dropped."""
    return value.split(";", 1)[0].strip().lower()


def request_refusal(request: SipRequest) -> SipResponse | None:
    """The error response a request gets before any dialog logic, or None if it passes."""
    method = request.method
    if method not in ALLOWED_METHODS:
        refused = response_to(request, 405 if method in KNOWN_METHODS else 501)
        refused.add("Allow", ALLOW_HEADER)
        return refused
    scheme = request.uri.split(":", 1)[0].lower()
    if scheme not in URI_SCHEMES:
        return response_to(request, 416, f"Unsupported URI Scheme ({scheme[:20]})")
    if method != "CANCEL":  # section 8.2.2.3: CANCEL and ACK carry no Require to honour
        required = [o.strip() for value in request.get_all("Require") for o in value.split(",")]
        required = [option for option in required if option]
        if required:
            refused = response_to(request, 420)
            refused.add("Unsupported", ", ".join(required))
            return refused
    content_type = request.get("Content-Type")
    allowed = BODY_TYPES.get(method)
    if (
        allowed is not None
        and request.body
        and content_type is not None
        and media_type(content_type) not in allowed
    ):
        refused = response_to(request, 415)
        refused.add("Accept", ", ".join(allowed))
        return refused
    if method == "INVITE":
        accept = [media_type(a) for v in request.get_all("Accept") for a in v.split(",")]
        accept = [a for a in accept if a]
        if accept and not _SDP_ACCEPTED.intersection(accept):
            return response_to(request, 406, "Not Acceptable (we answer with application/sdp)")
    return None
