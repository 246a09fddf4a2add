"""`{{name}}` placeholders in what the bot says, filled from one call's variables.

Place in the flow: the session renders its system prompt and greeting (the configured ones,
or the call's `prompt_overrides`) once when it is built, and hands `CallTemplates.render` to
the replies, where an engine whose replies are written text (the scripted engine:
`models.base.WrittenReplies`) fills its reply with it. The variables come from the caller's
side of the call (calls/variables.py: SIP headers, stream parameters, an API body), so:
- rendering is one pass: a value is inserted as it is and never scanned again, so a caller
  who sends `{{other}}` as a value gets those characters spoken, not another variable;
- a placeholder naming no variable renders empty, and is logged once per name, at most
  `MAX_LOGGED` names per call (a template cannot flood the log);
- a name is matched as variables are named (lower case, `-` and `.` as `_`), so
  `{{Customer-Id}}` finds `customer_id`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from voicebot.agent.config import AgentConfig

log = logging.getLogger("voicebot.agent")

MAX_LOGGED = 8
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]{1,64})\s*\}\}")


def placeholder_key(name: str) -> str:
    """How a placeholder's name is looked up among the variables."""
    return name.lower().replace("-", "_").replace(".", "_")


def render(template: str, variables: Mapping[str, str], unknown: set[str] | None = None) -> str:
    """`template` with every `{{name}}` replaced by its variable ("" if there is none; its
    name then added to `unknown`), in one pass."""

    def fill(match: re.Match[str]) -> str:
        key = placeholder_key(match.group(1))
        value = variables.get(key)
        if value is None:
            if unknown is not None:
                unknown.add(key)
            return ""
        return value

    if "{{" not in template:
        return template
    return _PLACEHOLDER.sub(fill, template)


class CallTemplates:
    """One call's renderer: its variables, and the unknown names it has logged."""

    def __init__(self, call_id: str, variables: Mapping[str, str]) -> None:
        self.call_id = call_id
        self.variables = dict(variables)
        self._logged: set[str] = set()

    def render(self, template: str) -> str:
        unknown: set[str] = set()
        text = render(template, self.variables, unknown)
        new = sorted(unknown - self._logged)[: max(0, MAX_LOGGED - len(self._logged))]
        if new:
            self._logged.update(new)
            log.info("call %s: no call variable %s: rendered empty", self.call_id,
                     ", ".join(new))  # fmt: skip
        return text


def call_config(
    config: AgentConfig, overrides: dict[str, str], templates: CallTemplates
) -> AgentConfig:
    """The agent settings of one call: its greeting and system prompt (the call's overrides
    in place of the configured ones) and its transfer-failure sentence, with the call's
    variables filled in."""
    greeting = overrides.get("greeting", config.greeting)
    prompt = overrides.get("system_prompt", config.system_prompt)
    greeting = templates.render(greeting) if greeting else greeting
    prompt = templates.render(prompt)
    failed = config.transfer_failed_message
    failed = templates.render(failed) if failed else failed
    if (greeting, prompt, failed) == (config.greeting, config.system_prompt,
                                       config.transfer_failed_message):  # fmt: skip
        return config
    return config.model_copy(update={"greeting": greeting, "system_prompt": prompt,
                                     "transfer_failed_message": failed})  # fmt: skip
