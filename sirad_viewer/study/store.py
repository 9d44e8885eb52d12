"""Study storage: an append-only, hash-chained event log (SQLite by default, any SQLAlchemy URL).

Every action (opened, grade set, locked, revealed, revised, idle, paused, closed, cannot grade)
is one event row committed on its own: SQLite runs in WAL mode with ``synchronous=FULL`` and
``BEGIN IMMEDIATE`` transactions, so a committed grade survives ``kill -9`` and power loss and two
writers never interleave. Each row stores the hash of the previous row; :meth:`StudyStore.verify`
recomputes the chain and names the first row that was edited.

The chain alone does not hold against someone who can write the database, so a store opened with
the study's :class:`~sirad_viewer.study.integrity.CoordinatorKey` also signs every event and a
checkpoint (event count, head hash, events per reader); see :mod:`sirad_viewer.study.integrity`.

One reader id has one live session at a time: a session takes the reader's *lease* before it
writes, and every write checks, in the same transaction, that the lease is still its own.

A PostgreSQL URL (``postgresql+psycopg://...``) runs the same code for multi-site studies.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sirad_viewer.study.protocol import Protocol, StudyError

if TYPE_CHECKING:
    from sirad_viewer.study.integrity import CoordinatorKey

log = logging.getLogger(__name__)

GENESIS = "0" * 64
EVENT_KINDS = {"created", "protocol_changed", "order", "opened", "grade_set", "locked", "revealed", "revised",
               "idle", "resumed", "paused", "closed", "cannot_grade", "session_started", "annotations"}
LEASE_TTL_S = 120.0  # a session that has not written or beaten its heart for this long is no longer live


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
    mac: str = ""


@dataclass(frozen=True)
class Verification:
    """What :meth:`StudyStore.verify` found.

    ``problems`` names each change found (empty when intact); ``with_key`` says whether the
    MACs, checkpoints and study id were checked or only the chain.
    """

    ok: bool
    n_events: int
    with_key: bool
    problems: tuple[str, ...]

    @property
    def message(self) -> str:
        if self.problems:
            return "; ".join(self.problems)
        if self.with_key:
            return f"{self.n_events} events, chain intact, every event and the checkpoint signed with the coordinator key"
        return (f"{self.n_events} events, chain intact (only the hash chain was checked: without the coordinator key "
                "a rewritten chain, deleted last events or a replaced database cannot be detected; give --key)")

    def __iter__(self):  # (ok, message), as before
        return iter((self.ok, self.message))

    def __getitem__(self, i: int) -> Any:
        return (self.ok, self.message)[i]


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
    key : CoordinatorKey, optional
        When given, every appended event and checkpoint is signed with it.
    """

    def __init__(self, url: str | Path, *, key: "CoordinatorKey | None" = None) -> None:
        import sqlalchemy as sa

        url = str(url)
        self.url = url if "://" in url else f"sqlite:///{Path(url).resolve()}"
        self.path = None if "://" in str(url) and not self.url.startswith("sqlite") else self.url.split("sqlite:///", 1)[-1]
        self.key = key
        self.engine = sa.create_engine(self.url, future=True)
        if self.engine.dialect.name == "sqlite":
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
                dbapi_conn.isolation_level = None  # transactions are begun below, IMMEDIATE
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.close()

            @sa.event.listens_for(self.engine, "begin")
            def _begin(conn) -> None:  # noqa: ANN001
                # take the write lock at the start: a read-then-write transaction can never find
                # its snapshot stale (SQLITE_BUSY_SNAPSHOT) and two writers never interleave
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        md = sa.MetaData()
        self.meta_t = sa.Table("study_meta", md, sa.Column("key", sa.String(64), primary_key=True),
                               sa.Column("value", sa.Text, nullable=False))
        self.events_t = sa.Table(
            "study_events", md,
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("ts", sa.String(40), nullable=False), sa.Column("reader", sa.String(128), nullable=False),
            sa.Column("case_id", sa.String(128), nullable=False), sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("payload", sa.Text, nullable=False), sa.Column("prev_hash", sa.String(64), nullable=False),
            sa.Column("hash", sa.String(64), nullable=False), sa.Column("mac", sa.String(64), nullable=False, default=""))
        self.leases_t = sa.Table(
            "study_leases", md, sa.Column("reader", sa.String(128), primary_key=True),
            sa.Column("owner", sa.String(64), nullable=False), sa.Column("since", sa.String(40), nullable=False),
            sa.Column("heartbeat", sa.String(40), nullable=False))
        md.create_all(self.engine)
        cols = {c["name"] for c in sa.inspect(self.engine).get_columns("study_events")}
        if "mac" not in cols:  # a study file from before the MACs
            with self.engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE study_events ADD COLUMN mac VARCHAR(64) NOT NULL DEFAULT ''")
        self._sa = sa

    # --- creation and protocol -------------------------------------------------------------------
    @classmethod
    def create(cls, url: str | Path, protocol: Protocol, *, key: "CoordinatorKey | None" = None) -> "StudyStore":
        """A new study. With ``key``, the study id is the key's and every event is signed."""
        from sirad_viewer.study.integrity import new_study_id

        store = cls(url, key=key)
        if store.get_meta("protocol") is not None:
            raise StudyError("already holds a study; open it instead of creating it again", path=str(url), code="exists")
        study_id = key.study_id if key is not None else new_study_id()
        with store.engine.begin() as conn:
            conn.execute(store.meta_t.insert(), [{"key": "protocol", "value": protocol.canonical_json()},
                                                 {"key": "protocol_hash", "value": protocol.hash},
                                                 {"key": "study_id", "value": study_id},
                                                 {"key": "created", "value": _now()}])
        store.append("", "", "created", {"protocol_hash": protocol.hash, "protocol": protocol.to_dict(),
                                         "study_id": study_id})
        return store

    @property
    def study_id(self) -> str | None:
        return self.get_meta("study_id")

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
        self.append("", "", "protocol_changed", {"from": old, "to": protocol.hash, "protocol": protocol.to_dict()})

    # --- leases: one live session per reader -----------------------------------------------------
    def acquire_lease(self, reader: str, owner: str, *, takeover: bool = False, ttl_s: float = LEASE_TTL_S) -> None:
        """Make ``owner`` the reader's one live session; refused while another live session holds it."""
        sa = self._sa
        now = _dt.datetime.now(_dt.timezone.utc)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(self.leases_t).where(self.leases_t.c.reader == reader)).first()
            if row is not None and row.owner != owner:
                age = (now - _dt.datetime.fromisoformat(row.heartbeat)).total_seconds()
                if age < ttl_s and not takeover:
                    raise StudyError(f"reader {reader} is already signed in elsewhere (since {row.since[:19]} UTC, "
                                     f"last active {age:.0f} s ago); close that session or take it over",
                                     code="reader_busy", context={"since": row.since, "age_s": age})
            if row is not None:
                conn.execute(self.leases_t.delete().where(self.leases_t.c.reader == reader))
            ts = now.isoformat(timespec="microseconds")
            conn.execute(self.leases_t.insert().values(reader=reader, owner=owner, since=ts, heartbeat=ts))

    def heartbeat(self, reader: str, owner: str) -> bool:
        """Refresh the lease; False when it was taken over."""
        with self.engine.begin() as conn:
            res = conn.execute(self.leases_t.update().where((self.leases_t.c.reader == reader)
                                                             & (self.leases_t.c.owner == owner)).values(heartbeat=_now()))
        return res.rowcount == 1

    def release_lease(self, reader: str, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.leases_t.delete().where((self.leases_t.c.reader == reader) & (self.leases_t.c.owner == owner)))

    # --- the log ---------------------------------------------------------------------------------
    def append(self, reader: str, case: str, kind: str, payload: dict[str, Any] | None = None, *,
               lease: str | None = None) -> Event:
        """Append one event in its own transaction (committed when this returns).

        With ``lease`` (the session's owner id) the event is refused unless that session still
        holds the reader's lease, checked in the same transaction.
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        payload_json = json.dumps(payload or {}, sort_keys=True, separators=(",", ":"))
        sa = self._sa
        key = self.key
        for attempt in range(20):
            ts = _now()
            try:
                with self.engine.begin() as conn:
                    if lease is not None:
                        row = conn.execute(sa.select(self.leases_t.c.owner).where(self.leases_t.c.reader == reader)).first()
                        if row is None or row.owner != lease:
                            raise StudyError(f"this session of reader {reader} was ended: the reader signed in "
                                             "elsewhere (took over); nothing more is written from here",
                                             code="session_taken_over")
                        conn.execute(self.leases_t.update().where(self.leases_t.c.reader == reader).values(heartbeat=ts))
                    last = conn.execute(sa.select(self.events_t.c.seq, self.events_t.c.hash)
                                        .order_by(self.events_t.c.seq.desc()).limit(1)).first()
                    seq = 1 if last is None else last[0] + 1
                    prev = GENESIS if last is None else last[1]
                    h = event_hash(prev, seq, ts, reader, case, kind, payload_json)
                    mac = key.event_mac(h) if key is not None else ""
                    conn.execute(self.events_t.insert().values(seq=seq, ts=ts, reader=reader, case_id=case, kind=kind,
                                                               payload=payload_json, prev_hash=prev, hash=h, mac=mac))
                    cp = None
                    if key is not None:
                        counts = dict(conn.execute(sa.select(self.events_t.c.reader, sa.func.count())
                                                   .group_by(self.events_t.c.reader)).all())
                        cp = key.checkpoint(seq, h, counts)
                        upd = conn.execute(self.meta_t.update().where(self.meta_t.c.key == "checkpoint")
                                           .values(value=json.dumps(cp)))
                        if upd.rowcount == 0:
                            conn.execute(self.meta_t.insert().values(key="checkpoint", value=json.dumps(cp)))
                break
            except sa.exc.IntegrityError:  # another writer (a second site) took this seq: chain on top of it
                if attempt == 19:
                    raise
        if cp is not None:
            try:
                key.update_anchor(cp)
            except OSError as exc:  # the log is committed; the outside anchor is a second line
                log.warning("the coordinator key's anchor beside %s could not be updated: %s", key.path, exc)
        return Event(seq, ts, reader, case, kind, json.loads(payload_json), prev, h, mac)

    def events(self, *, reader: str | None = None, case: str | None = None) -> Iterator[Event]:
        sa = self._sa
        q = sa.select(self.events_t).order_by(self.events_t.c.seq)
        if reader is not None:
            q = q.where(self.events_t.c.reader == reader)
        if case is not None:
            q = q.where(self.events_t.c.case_id == case)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        for row in rows:
            yield Event(row.seq, row.ts, row.reader, row.case_id, row.kind, json.loads(row.payload), row.prev_hash,
                        row.hash, row.mac or "")

    def verify(self, key: "CoordinatorKey | None" = None) -> Verification:
        """Recompute the hash chain and, with the coordinator key, the MACs, checkpoints and study id.

        Returns a :class:`Verification` (it also unpacks as ``ok, message``) naming every change found.
        """
        key = key if key is not None else self.key
        problems: list[str] = []
        sa = self._sa
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.events_t).order_by(self.events_t.c.seq)).all()
        prev = GENESIS
        expected = 1
        chain_broken = False
        unsigned: list[int] = []
        badmac: list[str] = []
        counts: dict[str, int] = {}
        signed_protocol: dict[str, Any] | None = None
        signed_protocol_hash: str | None = None
        for row in rows:
            if not chain_broken:
                if row.seq != expected:
                    problems.append(f"event {expected} is missing (the next row is {row.seq}): rows were deleted")
                    chain_broken = True
                elif row.prev_hash != prev:
                    problems.append(f"event {row.seq} does not follow event {row.seq - 1}: the log was reordered or altered")
                    chain_broken = True
                elif event_hash(prev, row.seq, row.ts, row.reader, row.case_id, row.kind, row.payload) != row.hash:
                    problems.append(f"event {row.seq} ({row.kind}, reader {row.reader or '-'}, case {row.case_id or '-'}) "
                                    "was edited after it was written")
                    chain_broken = True
            if key is not None:
                if not row.mac:
                    unsigned.append(row.seq)
                elif not key.mac_ok(row.hash, row.mac):
                    badmac.append(f"{row.seq} ({row.kind}, reader {row.reader or '-'}, case {row.case_id or '-'})")
            counts[row.reader] = counts.get(row.reader, 0) + 1
            if row.kind in ("created", "protocol_changed"):
                try:
                    pl = json.loads(row.payload)
                    signed_protocol_hash = pl.get("protocol_hash", pl.get("to"))
                    signed_protocol = pl.get("protocol")
                except ValueError:
                    pass
            prev = row.hash
            expected += 1
        n = len(rows)
        # the protocol: its stored hash, and what the (chained, signed) log recorded
        raw = self.get_meta("protocol")
        stored = json.loads(raw) if raw else {}
        stored_hash = Protocol.from_dict(stored).hash if raw else None
        if raw is not None and stored_hash != self.get_meta("protocol_hash"):
            problems.append("the stored protocol does not match its recorded hash: it was edited")
        if signed_protocol_hash is not None and stored_hash is not None and stored_hash != signed_protocol_hash:
            from sirad_viewer.study.integrity import protocol_diff

            what = protocol_diff(signed_protocol, stored)[:6] if signed_protocol else []
            problems.append("the protocol was changed after it was recorded in the log"
                            + (f" ({'; '.join(what)})" if what else f" (log: {signed_protocol_hash[:12]}, "
                               f"stored: {stored_hash[:12]})"))
        if key is not None:
            sid = self.get_meta("study_id")
            if sid != key.study_id:
                problems.append(f"this database is not the study the key was made for (study id {sid or 'none'}, "
                                f"key for {key.study_id}): it was replaced")
            if badmac:
                more = f" and {len(badmac) - 5} more" if len(badmac) > 5 else ""
                problems.append(f"event(s) {', '.join(badmac[:5])}{more} are not signed with the coordinator key: "
                                "forged, rewritten or from another study")
            if unsigned:
                problems.append(f"{len(unsigned)} event(s) carry no signature (first: event {unsigned[0]}): written by a "
                                "session without the coordinator key, or inserted")
            head = {row.seq: row.hash for row in rows}
            cps = []
            raw_cp = self.get_meta("checkpoint")
            if raw_cp is None:
                problems.append("the signed checkpoint is missing from the database")
            else:
                try:
                    cps.append(("the signed checkpoint in the database", json.loads(raw_cp)))
                except ValueError:
                    problems.append("the signed checkpoint in the database is unreadable")
            anchor = key.read_anchor()
            if anchor is not None:
                cps.append((f"the anchor beside the key ({key.anchor_path.name})", anchor))
            for where, cp in cps:
                if not key.checkpoint_ok(cp):
                    problems.append(f"{where} is not signed with this key: it was forged or belongs to another study")
                    continue
                c = int(cp["count"])
                if c > n:
                    problems.append(f"events {n + 1}-{c} are missing: {where} records {c} events, the log has {n} "
                                    "(the last events were deleted or an older copy was put back)")
                elif head.get(c) != cp["head"]:
                    problems.append(f"event {c} differs from {where}: the log was rewritten")
                for r, k in sorted(cp.get("readers", {}).items()):
                    have = counts.get(r, 0)
                    if have < int(k):
                        problems.append(f"reader {r or '(study)'}: {where} records {k} events, the log has {have}"
                                        + (" (all of this reader's events were deleted)" if have == 0 else ""))
        return Verification(not problems, n, key is not None, tuple(dict.fromkeys(problems)))

    def close(self) -> None:
        self.engine.dispose()
