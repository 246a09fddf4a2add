"""What the human agent's side gets with a transfer: the transcript so far and a summary.

Place in the flow: the call recorder keeps each closed turn here as it records it; on the
`transferred` / `transfer_failed` events it puts `context()` in the `call.transferred` /
`call.transfer_failed` webhooks (DESIGN.md section 4a), so the agent who picks the call up
sees what was said without asking again.

The summary is *extractive*, on purpose: no model writes it, nothing in it was not said.
It is the caller's last few utterances, word for word (what they wanted is nearly always
in them: "can I talk to someone about my order"), the bot's last reply, the DTMF keys and
the number of turns; `text` is the same as one line for a screen pop. An abstractive
summary (an LLM's) can be built by the receiver from `transcript`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_TURNS = 50  # the transcript in a webhook: the last this many turns
MAX_TEXT = 2000  # characters of one turn's text
LAST_UTTERANCES = 3  # the caller's utterances the summary quotes
SUMMARY_CHARS = 500


@dataclass
class TranscriptSoFar:
    """The turns of one call as they close: (speaker, what was said or heard, times)."""

    turns: list[dict[str, Any]] = field(default_factory=list)

    def add(self, speaker: str, text: str, start_s: float, end_s: float, *,
            interrupted: bool) -> None:  # fmt: skip
        turn: dict[str, Any] = {"speaker": speaker, "text": text[:MAX_TEXT],
                                "start_s": start_s, "end_s": end_s}  # fmt: skip
        if interrupted:
            turn["interrupted"] = True
        self.turns.append(turn)
        del self.turns[:-MAX_TURNS]

    def summary(self, dtmf: str) -> dict[str, Any]:
        """The extractive summary (see the module docstring)."""
        caller = [t["text"] for t in self.turns if t["speaker"] == "user"]
        bot = [t["text"] for t in self.turns if t["speaker"] == "bot"]
        last = caller[-LAST_UTTERANCES:]
        if last:
            quoted = " | ".join(f'"{text}"' for text in last)
            text = f"Caller said: {quoted}"
        else:
            text = "Caller said nothing the bot understood"
        if dtmf:
            text += f"; keys pressed: {dtmf}"
        return {
            "method": "extractive", "text": text[:SUMMARY_CHARS], "caller_last": last,
            "bot_last": bot[-1] if bot else None, "caller_turns": len(caller),
            "bot_turns": len(bot), "dtmf": dtmf,
        }  # fmt: skip


def context(
    transcript: TranscriptSoFar, dtmf: str, variables: dict[str, Any] | None
) -> dict[str, Any]:
    """The transfer webhooks' context fields: `transcript`, `summary`, and `variables`
    when the call has any."""
    out: dict[str, Any] = {
        "transcript": [dict(t) for t in transcript.turns],
        "summary": transcript.summary(dtmf),
    }
    if variables:
        out["variables"] = dict(variables)
    return out
