"""Dead-letter redrive (issue 15 item 4): collect what the dead-letter topics hold into a durable
index, list it (ids and reasons only) and replay chosen messages into their original topic.

Collecting pulls each audit subscription, records every message (create() with its deterministic
id, so a crash between the record and the ack only finds the record again), and then acks it: the
index, not the subscription's 31-day retention, keeps a dead letter until an operator is done with
it, a listing is complete and stable (two operators see the same thing, nothing is leased while
they look), and a replay by id is one document read. Replays are idempotent because every handler
is: exam and study events create jobs with deterministic ids (docs/auto-archive.md), job messages
are keyed by (job id, attempt) at the gateway and results are applied monotonically
(docs/admin-api.md). Replaying one message twice is therefore allowed and harmless."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from .. import logs
from ..domain import dead_letters as dl
from ..domain.errors import Conflict, NotFound, PermanentError, ValidationFailed
from ..ports import Clock, DeadLetterInbox, DeadLetterIndex, MessageBus

MAX_REPLAY_IDS = 100
MAX_PAGE = 500
PULL_BATCH = 100


@dataclass(frozen=True)
class DeadLetterSource:
    """A dead-letter topic and the audit pull subscription operators read it through."""

    kind: str
    topic_id: str
    subscription_id: str


@dataclass
class CollectReport:
    collected: dict[str, int] = field(default_factory=dict)  # kind -> new records
    oversized: dict[str, int] = field(default_factory=dict)  # kind -> left in the subscription
    more_pending: bool = False  # the per-call cap was reached: collect again
    errors: dict[str, str] = field(default_factory=dict)  # kind -> why it could not be collected


@dataclass(frozen=True)
class ReplayOutcome:
    id: str
    replayed: bool
    topic: str
    message_id: str = ""
    reason: str = ""

    def as_dict(self) -> dict:
        return {"id": self.id, "outcome": "replayed" if self.replayed else "failed", "topic": self.topic or None,
                "message_id": self.message_id or None, "reason": self.reason or None}


class RedriveService:
    def __init__(self, inbox: DeadLetterInbox, index: DeadLetterIndex, bus: MessageBus, clock: Clock, project_id: str,
                 sources: Sequence[DeadLetterSource], max_collect: int = 1000):
        self._inbox, self._index, self._bus, self._clock = inbox, index, bus, clock
        self._project = project_id
        self._sources = {s.kind: s for s in sources}
        self._max_collect = max_collect

    # -- collecting ------------------------------------------------------------------------
    def collect(self) -> CollectReport:
        report = CollectReport()
        for source in self._sources.values():
            try:
                new, oversized, capped = self._collect(source)
            except PermanentError as e:
                # E.g. its audit subscription is missing: what the index holds is still listed
                # and replayable; the answer says what could not be collected.
                logs.error("dead letters not collected", kind=source.kind, subscription=source.subscription_id, why=str(e))
                report.errors[source.kind] = str(e)
                continue
            report.collected[source.kind], report.oversized[source.kind] = new, oversized
            report.more_pending = report.more_pending or capped
        return report

    def _collect(self, source: DeadLetterSource) -> tuple[int, int, bool]:
        seen: set[str] = set()
        topics: dict[tuple[str, str], Optional[str]] = {}
        new = oversized = 0
        while len(seen) < self._max_collect:
            batch = self._inbox.pull(source.subscription_id, min(PULL_BATCH, self._max_collect - len(seen)))
            fresh = [(a, m) for a, m in batch if m.message_id not in seen]
            if not fresh:
                # Nothing, or only messages given back earlier in this call (too large to index).
                self._inbox.release(source.subscription_id, [a for a, _ in batch])
                return new, oversized, False
            done = []
            back = [a for a, m in batch if (a, m) not in fresh]  # given back earlier in this call
            for ack_id, message in fresh:
                seen.add(message.message_id)
                if len(message.data) > dl.MAX_STORED_BYTES:
                    # A Firestore document holds 1 MiB; Pub/Sub messages may be 10 MB. Left in the
                    # subscription (docs/operations-redrive.md: read it with gcloud).
                    logs.warning("dead letter too large to index; left in its subscription", kind=source.kind,
                                 message_id=message.message_id, size_bytes=len(message.data))
                    oversized += 1
                    back.append(ack_id)
                    continue
                record = dl.describe(source.kind, message, dead_letter_topic=source.topic_id, project_id=self._project,
                                     subscription_topic=self._source_topic(message.attributes, topics),
                                     collected_at=self._clock.now())
                if self._index.create(record):
                    new += 1
                    logs.info("dead letter collected", dead_letter_id=record.id, kind=record.kind,
                              function=record.function, reason_code=record.reason_code,
                              original_topic=record.original_topic, original_message_id=record.original_message_id)
                done.append(ack_id)
            self._inbox.ack(source.subscription_id, done)  # recorded first: an ack never loses one
            self._inbox.release(source.subscription_id, back)
        return new, oversized, True

    def _source_topic(self, attributes: Mapping[str, str], cache: dict[tuple[str, str], Optional[str]]) -> Optional[str]:
        sub = attributes.get(dl.SOURCE_SUBSCRIPTION)
        if not sub:
            return None
        project = attributes.get(dl.SOURCE_PROJECT) or self._project
        if project != self._project:
            return None  # never replay into another project
        if (project, sub) not in cache:
            cache[(project, sub)] = self._inbox.topic_of(project, sub)
        return cache[(project, sub)]

    # -- listing ---------------------------------------------------------------------------
    def list(self, query: Mapping[str, str]) -> dict:
        """Collect, then one page of the index. Query: kind, state, limit (1-500, default 100),
        page_token (the previous page's next_page_token)."""
        unknown = sorted(set(query) - {"kind", "state", "limit", "page_token"})
        errors = {k: "unknown parameter" for k in unknown}
        kind, state = query.get("kind"), query.get("state")
        if kind is not None and kind not in self._sources:
            errors["kind"] = f"one of {', '.join(sorted(self._sources))}"
        if state is not None and state not in {s.value for s in dl.DeadLetterState}:
            errors["state"] = f"one of {', '.join(s.value for s in dl.DeadLetterState)}"
        limit = 100
        if "limit" in query:
            raw = query["limit"]
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
                errors["limit"] = f"an integer from 1 to {MAX_PAGE}"
            else:
                limit = int(raw)
        after = query.get("page_token")
        if after is not None and not dl.is_record_id(after):
            errors["page_token"] = "not a page token of this listing"
        if errors:
            raise ValidationFailed(errors)
        report = self.collect()
        rows = self._index.list(kind, state, limit + 1, after)
        page = rows[:limit]
        return {"dead_letters": [r.summary() for r in page],
                "next_page_token": page[-1].id if len(rows) > limit else None,
                "collected": report.collected, "left_in_subscription": report.oversized,
                "more_pending": report.more_pending, "collect_errors": report.errors}

    def get(self, record_id: str) -> dict:
        if not dl.is_record_id(record_id):
            raise NotFound("no such dead letter")
        record = self._index.get(record_id)
        if record is None:
            self.collect()  # it may still be waiting in its subscription
            record = self._index.get(record_id)
        if record is None:
            raise NotFound("no such dead letter")
        return record.summary()

    # -- replaying -------------------------------------------------------------------------
    def replay(self, body: object, operator: str) -> dict:
        """Publish each chosen dead letter, unchanged, to its original topic. Every id is checked
        before anything is published: an unknown id (404) or one whose topic is unknown (409)
        publishes nothing. A topic deleted since (its gateway was deleted) fails that id alone."""
        ids = self._replay_ids(body)
        records = {i: self._index.get(i) for i in ids}
        if any(r is None for r in records.values()):
            self.collect()
            records = {i: r or self._index.get(i) for i, r in records.items()}
        missing = [i for i, r in records.items() if r is None]
        if missing:
            raise NotFound(f"no such dead letter: {', '.join(missing)}")
        unknown = [i for i, r in records.items() if r is not None and not r.original_topic]
        if unknown:
            raise Conflict(f"original topic unknown, cannot replay: {', '.join(unknown)}")
        outcomes = []
        for record_id, record in records.items():
            assert record is not None
            try:
                message_id = self._bus.publish(record.original_topic, record.data, dl.replay_attributes(record))
            except PermanentError as e:
                logs.warning("dead letter not replayed", dead_letter_id=record_id, topic=record.original_topic, why=str(e))
                outcomes.append(ReplayOutcome(record_id, False, record.original_topic, reason=str(e)))
                continue
            self._index.mark_replayed(record_id, self._clock.now(), operator, message_id)
            logs.info("dead letter replayed", dead_letter_id=record_id, kind=record.kind, topic=record.original_topic,
                      message_id=message_id, operator=operator, original_message_id=record.original_message_id)
            outcomes.append(ReplayOutcome(record_id, True, record.original_topic, message_id))
        return {"results": [o.as_dict() for o in outcomes]}

    @staticmethod
    def _replay_ids(body: object) -> list[str]:
        if not isinstance(body, dict):
            raise ValidationFailed({"body": "a JSON object with ids"})
        errors = {k: "unknown field" for k in sorted(set(body) - {"ids"})}
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids:
            errors["ids"] = "a non-empty list of dead-letter ids"
        elif len(ids) > MAX_REPLAY_IDS:
            errors["ids"] = f"at most {MAX_REPLAY_IDS} ids per request"
        elif not all(dl.is_record_id(i) for i in ids):
            errors["ids"] = "each id is <inbound|gateway>-<message id>, as listed"
        if errors:
            raise ValidationFailed(errors)
        assert isinstance(ids, list)
        return list(dict.fromkeys(ids))  # an id given twice is replayed once per request
