"""Webhooks (DESIGN.md section 4a): call events POSTed to receivers, signed per Standard
Webhooks, delivered at least once and in order per call from the records' outbox.

Place in the flow: `calls.records` writes the outbox rows with the events they carry;
`sender.WebhookSender` delivers them (leases in `outbox`, signatures in `signing`); the
gateway starts the sender and serves the dead-letter view (`gateway/webhooks_api.py`).
"""

from voicebot.calls.webhooks.sender import WebhookSender

__all__ = ["WebhookSender"]
