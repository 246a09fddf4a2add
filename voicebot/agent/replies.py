"""Replies: the bot's one reply in progress, from its start to its last frame played.

Place in the flow: a turn starts a reply (fixed texts, or the LLM on the conversation), or
adopts the one a speculation has ready, or resumes what a false interruption cut off; its
sentences go to the live playout, which the session's output tick plays out. A barge-in
cancels it synchronously; once it is done and fully played the tick takes it `finished`.
"""

from __future__ import annotations

from voicebot.agent.conversation import Conversation, SuspendedReply
from voicebot.agent.engine_calls import EngineCalls
from voicebot.agent.playout import Playout
from voicebot.agent.reply import ReplyPipeline
from voicebot.agent.speculation import Speculation
from voicebot.agent.turn_timing import StageTimes
from voicebot.models.base import CallAction, ChatMessage


class Replies:
    def __init__(
        self, engine_calls: EngineCalls, conversation: Conversation, playout: Playout
    ) -> None:
        self._engine_calls = engine_calls
        self._conversation = conversation
        self._playout = playout
        # The reply being produced or played into the live playout: set when one starts (or
        # a speculative one is adopted); None again on barge-in and once fully played (at
        # the call's end `stop` leaves it set, cancelled).
        self.current: ReplyPipeline | None = None

    def start(
        self,
        *,
        texts: list[str] | None = None,
        messages: list[ChatMessage] | None = None,
        action: CallAction | None = None,
        keep_spoken: bool = False,
        times: StageTimes | None = None,
    ) -> None:
        """Speak `texts`, or what the LLM answers to `messages`; `action` (a resumed
        hang-up or transfer) follows it. `keep_spoken`: a resume, the heard part stays.
        `times`: the answered turn's stage stamps."""
        if not keep_spoken:
            self._conversation.spoken = []
        reply = self._engine_calls.new_reply(self._playout, times)
        reply.action = action
        self.current = reply
        if messages is not None:
            reply.start_llm(messages)
        else:
            reply.start_texts(texts or [])

    def adopt(self, speculation: Speculation) -> None:
        """The speculative reply is the real one: its held audio goes live."""
        self._conversation.spoken = []
        self.current = speculation.hand_over(self._playout)

    def restore(self, suspended: SuspendedReply) -> None:
        """A false interruption: what it cut off is queued again where it stopped (the rest
        of it is then started with `keep_spoken`)."""
        self._conversation.spoken = suspended.spoken_texts
        for utterance in suspended.utterances:
            self._playout.append(utterance)

    def cancel(self) -> ReplyPipeline | None:
        """Barge-in: stop now (no await); returns the reply that was cut, if any."""
        reply, self.current = self.current, None
        if reply is not None:
            reply.cancel()
        return reply

    def finished(self) -> ReplyPipeline | None:
        """The reply, if it is done (its last frame played, or it produced nothing); it is
        no longer current. Only asked once the playout is empty."""
        reply = self.current
        if reply is None or not reply.done:
            return None
        self.current = None
        return reply

    async def stop(self) -> None:
        """The call ends: cancel the reply and wait for its tasks."""
        if self.current is not None:
            self.current.cancel()
            await self.current.wait()
