"""Study storage: an append-only, hash-chained event log (SQLite by default, any SQLAlchemy URL).

Every action (opened, grade set, locked, revealed, revised, idle, paused, closed, cannot grade)
is one event row committed on its own: SQLite runs in WAL mode with ``synchronous=FULL``, so a
committed grade survives ``kill -9`` and power loss. Each row stores the hash of the previous
row; :meth:`StudyStore.verify` recomputes the chain and names the first row that was edited.
The current state (grades, locks, where each reader stopped) is derived from the log.

A PostgreSQL URL (``postgresql+psycopg://...``) runs the same code for multi-site studies.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sirad_viewer.study.protocol import Protocol, StudyError

log = logging.getLogger(__name__)

GENESIS = "0" * 64
EVENT_KINDS = {"created", "protocol_changed", "order", "opened", "grade_set", "locked", "revealed", "revised",
               "idle", "resumed", "paused", "closed", "cannot_grade", "session_started"}


@dataclass(frozen=True)
class Event:
    seq: int
    ts: str
    reader: str
    case: str
    kind: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def event_hash(prev_hash: str, seq: int, ts: str, reader: str, case: str, kind: str, payload_json: str) -> str:
    h = hashlib.sha256()
    for part in (prev_hash, str(seq), ts, reader, case, kind, payload_json):
        h.update(part.encode())
        h.update(b"\x1f")
    return h.hexdigest()


class StudyStore:
    """One study: its frozen-able protocol and its event log.

    Parameters
    ----------
    url : str
        A file path (SQLite, one file per study) or an SQLAlchemy URL.
    """

    def __init__(self, url: str | Path) -> None:
        import sqlalchemy as sa

        url = str(url)
        self.url = url if "://" in url else f"sqlite:///{Path(url).resolve()}"
        self.path = None if "://" in str(url) and not self.url.startswith("sqlite") else self.url.split("sqlite:///", 1)[-1]
        self.engine = sa.create_engine(self.url, future=True)
        if self.engine.dialect.name == "sqlite":
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA busy_timeout=5000")
                cur.close()
        md = sa.MetaData()
        self.meta_t = sa.Table("study_meta", md, sa.Column("key", sa.String(64), primary_key=True),
                               sa.Column("value", sa.Text, nullable=False))
        self.events_t = sa.Table(
            "study_events", md,
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("ts", sa.String(40), nullable=False), sa.Column("reader", sa.String(128), nullable=False),
            sa.Column("case_id", sa.String(128), nullable=False), sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("payload", sa.Text, nullable=False), sa.Column("prev_hash", sa.String(64), nullable=False),
            sa.Column("hash", sa.String(64), nullable=False))
        md.create_all(self.engine)
        self._sa = sa

    # --- creation and protocol -------------------------------------------------------------------
    @classmethod
    def create(cls, url: str | Path, protocol: Protocol) -> "StudyStore":
        store = cls(url)
        if store.get_meta("protocol") is not None:
            raise StudyError("already holds a study; open it instead of creating it again", path=str(url), code="exists")
        with store.engine.begin() as conn:
            conn.execute(store.meta_t.insert(), [{"key": "protocol", "value": protocol.canonical_json()},
                                                 {"key": "protocol_hash", "value": protocol.hash},
                                                 {"key": "created", "value": _now()}])
        store.append("", "", "created", {"protocol_hash": protocol.hash})
        return store

    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(self._sa.select(self.meta_t.c.value).where(self.meta_t.c.key == key)).first()
        return None if row is None else row[0]

    @property
    def protocol(self) -> Protocol:
        raw = self.get_meta("protocol")
        if raw is None:
            raise StudyError("holds no study protocol", path=self.path or self.url, code="no_study")
        return Protocol.from_dict(json.loads(raw))

    @property
    def frozen(self) -> bool:
        """True once any grade exists: the protocol can no longer change."""
        with self.engine.connect() as conn:
            n = conn.execute(self._sa.select(self._sa.func.count()).select_from(self.events_t)
                             .where(self.events_t.c.kind.in_(["grade_set", "locked", "cannot_grade"]))).scalar_one()
        return n > 0

    def update_protocol(self, protocol: Protocol) -> None:
        """Replace the protocol (e.g. add cases) - refused once the first grade exists."""
        if self.frozen:
            raise StudyError(f"the protocol is frozen (hash {self.protocol.hash[:12]}): grades exist, so cases, readers "
                             "and design can no longer change", code="protocol_frozen")
        protocol.validate()
        old = self.protocol.hash
        with self.engine.begin() as conn:
            conn.execute(self.meta_t.update().where(self.meta_t.c.key == "protocol").values(value=protocol.canonical_json()))
            conn.execute(self.meta_t.update().where(self.meta_t.c.key == "protocol_hash").values(value=protocol.hash))
        self.append("", "", "protocol_changed", {"from": old, "to": protocol.hash})

    # --- the log ---------------------------------------------------------------------------------
    def append(self, reader: str, case: str, kind: str, payload: dict[str, Any] | None = None) -> Event:
        """Append one event in its own transaction (committed when this returns)."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        payload_json = json.dumps(payload or {}, sort_keys=True, separators=(",", ":"))
        sa = self._sa
        for attempt in range(20):
            ts = _now()
            try:
                with self.engine.begin() as conn:
                    last = conn.execute(sa.select(self.events_t.c.seq, self.events_t.c.hash)
                                        .order_by(self.events_t.c.seq.desc()).limit(1)).first()
                    seq = 1 if last is None else last[0] + 1
                    prev = GENESIS if last is None else last[1]
                    h = event_hash(prev, seq, ts, reader, case, kind, payload_json)
                    conn.execute(self.events_t.insert().values(seq=seq, ts=ts, reader=reader, case_id=case, kind=kind,
                                                               payload=payload_json, prev_hash=prev, hash=h))
                break
            except sa.exc.IntegrityError:  # another writer (a second site) took this seq: chain on top of it
                if attempt == 19:
                    raise
        return Event(seq, ts, reader, case, kind, json.loads(payload_json), prev, h)

    def events(self, *, reader: str | None = None, case: str | None = None) -> Iterator[Event]:
        sa = self._sa
        q = sa.select(self.events_t).order_by(self.events_t.c.seq)
        if reader is not None:
            q = q.where(self.events_t.c.reader == reader)
        if case is not None:
            q = q.where(self.events_t.c.case_id == case)
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                yield Event(row.seq, row.ts, row.reader, row.case_id, row.kind, json.loads(row.payload), row.prev_hash, row.hash)

    def verify(self) -> tuple[bool, str]:
        """Recompute the hash chain. Returns (ok, message naming the first bad row)."""
        prev = GENESIS
        expected_seq = 1
        sa = self._sa
        with self.engine.connect() as conn:
            for row in conn.execute(sa.select(self.events_t).order_by(self.events_t.c.seq)):
                if row.seq != expected_seq:
                    return False, f"event {expected_seq} is missing (next row is {row.seq}): rows were deleted"
                if row.prev_hash != prev:
                    return False, f"event {row.seq} does not follow event {row.seq - 1}: the chain was altered"
                h = event_hash(prev, row.seq, row.ts, row.reader, row.case_id, row.kind, row.payload)
                if h != row.hash:
                    return False, f"event {row.seq} ({row.kind}, reader {row.reader}, case {row.case_id}) was edited after it was written"
                prev = row.hash
                expected_seq += 1
        raw = self.get_meta("protocol_hash")
        if raw is not None and Protocol.from_dict(json.loads(self.get_meta("protocol") or "{}")).hash != raw:
            return False, "the stored protocol does not match its recorded hash: it was edited"
        return True, f"{expected_seq - 1} events, chain intact"

    def close(self) -> None:
        self.engine.dispose()
