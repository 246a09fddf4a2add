"""Call variables: what the caller's side knows of a call, as a small, clean name -> text map.

Place in the flow: a leg gathers what its wire carries about the call (SIP INVITE headers
named in `sip.variable_headers`, a media stream's custom parameters or headers, the
FreeSWITCH metadata, the Asterisk AudioSocket lookup's JSON, the body of `POST /v1/calls`)
and passes it through `call_variables` into `LegMedia.variables`. From there the call
manager stores them with the call record (`calls.variables`, webhooks `data.variables`) and
hands them to the session, which fills `{{name}}` placeholders with them
(`agent/templates.py`).

The rule, the same for every source (DESIGN.md section 4a, README "Call variables"):
- names: accents folded to ASCII, camelCase split into words (`customerId` ->
  `customer_id`), lower-cased, one leading `x-` taken off (`X-Customer-Id` ->
  `customer_id`), every run of characters other than `a-z`, `0-9` becomes one `_`,
  leading and trailing `_` dropped, at most 64 characters; a name left empty is dropped;
  the first value of a name wins;
- values: strings, numbers and booleans (as text; nested objects and lists are dropped),
  control characters removed, surrounding whitespace stripped, at most 256 characters;
- at most 32 variables per call (the rest dropped).
Values are data, never templates: rendering is one pass, so a value holding `{{other}}`
is spoken as it is, not expanded.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections.abc import Iterable, Mapping

MAX_VARIABLES = 32
MAX_NAME = 64
MAX_VALUE = 256

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_NAME = re.compile(r"[^a-z0-9]+")


def variable_name(raw: str) -> str:
    """The normalised name of a header, parameter or key ("" if nothing is left of it)."""
    folded = unicodedata.normalize("NFKD", str(raw)[: MAX_NAME * 4])
    folded = folded.encode("ascii", "ignore").decode("ascii")  # "Näme" -> "Name"
    name = _CAMEL.sub("_", folded).lower().strip()
    if name.startswith("x-"):
        name = name[2:]
    return _NOT_NAME.sub("_", name).strip("_")[:MAX_NAME].rstrip("_")


def variable_value(raw: object) -> str | None:
    """A value as clean, bounded text; None for what is not a scalar (objects, lists, null)."""
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, str | int | float):
        text = str(raw)
    else:
        return None
    text = "".join(
        " " if ch in "\t\n\r" else ch
        for ch in text[: MAX_VALUE * 4]
        if ch in "\t\n\r" or unicodedata.category(ch) not in ("Cc", "Cs", "Zl", "Zp")
    )
    return text.strip()[:MAX_VALUE].strip()


def call_variables(
    raw: Mapping[str, object] | Iterable[tuple[str, object]] | None,
    *,
    limit: int = MAX_VARIABLES,
) -> dict[str, str]:
    """`raw` (a mapping, or (name, value) pairs in order: repeated names keep the first)
    under the rule above."""
    if raw is None:
        return {}
    items = raw.items() if isinstance(raw, Mapping) else raw
    out: dict[str, str] = {}
    for key, value in items:
        if len(out) >= limit:
            break
        name = variable_name(str(key))
        text = variable_value(value)
        if name and text is not None and name not in out:
            out[name] = text
    return out


def merge_variables(*sources: Mapping[str, str], limit: int = MAX_VARIABLES) -> dict[str, str]:
    """Variables of several sources, earlier ones first (and winning a name)."""
    out: dict[str, str] = {}
    for source in sources:
        for name, value in source.items():
            if len(out) >= limit:
                return out
            out.setdefault(name, value)
    return out


def select_headers(
    headers: Iterable[tuple[str, str]], wanted: Iterable[str]
) -> list[tuple[str, str]]:
    """The (name, value) pairs of `headers` named in `wanted` (case-insensitive; a pattern
    like `X-*` takes every header it matches), in `wanted`'s order, repeated headers joined
    with ", " (a Diversion chain) into one pair."""
    headers = list(headers)
    out: dict[str, tuple[str, list[str], int]] = {}  # lower name -> (name, values, pattern)
    for index, pattern in enumerate(p.strip().lower() for p in wanted):
        if not pattern:
            continue
        for name, value in headers:
            lower = name.lower()
            if lower == pattern or ("*" in pattern and fnmatch.fnmatchcase(lower, pattern)):
                seen = out.get(lower)
                if seen is None:
                    out[lower] = (name, [value], index)
                elif seen[2] == index:  # the same header again, not another pattern's hit
                    seen[1].append(value)
    return [(name, ", ".join(values)) for name, values, _ in out.values()]
