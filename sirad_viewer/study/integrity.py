"""Tamper evidence that does not trust the study database: the coordinator key, MACs, checkpoints.

A hash chain alone proves nothing against someone who can write the database: they rewrite the
chain with sqlite3 and sha256. So ``sirad study create`` makes a **coordinator key** (32 random
bytes, a JSON file with mode 0600, kept *outside* the study folder) bound to the study's random
id. Every process that holds the key

* signs each event: ``mac = HMAC-SHA256(key, "event|" + study_id + "|" + event hash)``; the event
  hash already covers the sequence number, the previous hash and the content;
* signs a **checkpoint** after each event: the event count, the head hash and the number of
  events per reader, stored in the database *and* in an anchor file next to the key
  (``KEY.anchor``), which only grows.

Verification with the key then names what changed: an edited or forged event (bad MAC), a
reordered or renumbered log (chain), deleted events at the tail or a whole reader (the signed
checkpoint or anchor counts more events than the log has), a rolled-back copy (the anchor is
newer than the database), a protocol edited together with its stored hash (the signed
``created``/``protocol_changed`` events record the protocol), or another study put in place
(a different study id, MACs that do not verify). Without the key only the chain is checked,
and the report says so.

Limits (stated, not hidden): anyone who can read the key file can sign, so it is kept readable
only by the coordinator and the reading workstations' program account; events appended by a
session that was not given the key carry no MAC and are reported as unsigned.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sirad_viewer.study.protocol import StudyError

KEY_FORMAT = "sirad-coordinator-key/1"


@dataclass(frozen=True)
class CoordinatorKey:
    """The coordinator's secret for one study.

    Attributes
    ----------
    study_id : str
        The random id of the study this key was made for.
    secret : bytes
        32 random bytes.
    path : Path or None
        Where the key was read from (the anchor file lives beside it).
    """

    study_id: str
    secret: bytes
    path: Path | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"CoordinatorKey(study_id={self.study_id!r}, path={str(self.path) if self.path else None!r})"

    # --- files -----------------------------------------------------------------------------
    @classmethod
    def new(cls, study_id: str) -> "CoordinatorKey":
        return cls(study_id, secrets.token_bytes(32))

    def write(self, path: str | Path) -> "CoordinatorKey":
        """Write the key (mode 0600); refuses to overwrite an existing file."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": KEY_FORMAT, "study_id": self.study_id, "key": self.secret.hex()}
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise StudyError("already exists: a coordinator key is made for one study only; choose another path",
                             path=p, code="key_exists") from None
        except OSError as exc:
            raise StudyError(f"the coordinator key cannot be written: {exc.strerror}", path=p, code="key_unwritable") from exc
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return CoordinatorKey(self.study_id, self.secret, p)

    @classmethod
    def load(cls, path: str | Path) -> "CoordinatorKey":
        p = Path(path)
        try:
            if p.stat().st_size > 4096:
                raise StudyError("is not a coordinator key (too large)", path=p, code="bad_key")
            doc = json.loads(p.read_text())
            if doc.get("format") != KEY_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            secret = bytes.fromhex(doc["key"])
            if len(secret) < 16:
                raise ValueError("key shorter than 16 bytes")
            return cls(str(doc["study_id"]), secret, p)
        except OSError as exc:
            raise StudyError(f"the coordinator key cannot be read: {exc.strerror}", path=p, code="bad_key") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StudyError(f"is not a coordinator key: {exc}", path=p, code="bad_key") from exc

    # --- MACs ------------------------------------------------------------------------------
    def _mac(self, *parts: Any) -> str:
        msg = "|".join(str(p) for p in parts).encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def event_mac(self, event_hash: str) -> str:
        return self._mac("event", self.study_id, event_hash)

    def checkpoint(self, count: int, head: str, readers: dict[str, int]) -> dict[str, Any]:
        readers = {str(k): int(v) for k, v in sorted(readers.items())}
        return {"study_id": self.study_id, "count": int(count), "head": head, "readers": readers,
                "mac": self._mac("checkpoint", self.study_id, int(count), head, json.dumps(readers, sort_keys=True))}

    def checkpoint_ok(self, cp: dict[str, Any]) -> bool:
        try:
            want = self.checkpoint(int(cp["count"]), str(cp["head"]), dict(cp["readers"]))["mac"]
            return cp.get("study_id") == self.study_id and hmac.compare_digest(want, str(cp["mac"]))
        except (KeyError, TypeError, ValueError):
            return False

    def mac_ok(self, event_hash: str, mac: str) -> bool:
        return bool(mac) and hmac.compare_digest(self.event_mac(event_hash), mac)

    # --- the anchor beside the key (outside the database) ----------------------------------
    @property
    def anchor_path(self) -> Path | None:
        return None if self.path is None else self.path.with_name(self.path.name + ".anchor")

    def read_anchor(self) -> dict[str, Any] | None:
        p = self.anchor_path
        if p is None or not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return {"unreadable": True}

    def update_anchor(self, cp: dict[str, Any]) -> None:
        """Record a newer checkpoint beside the key (never an older one: the anchor only grows)."""
        p = self.anchor_path
        if p is None:
            return
        import fcntl

        lock = p.with_name(p.name + ".lock")
        with open(lock, "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            old = self.read_anchor()
            if old and not old.get("unreadable") and self.checkpoint_ok(old) and int(old["count"]) >= int(cp["count"]):
                return
            tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
            with open(tmp, "w") as fh:
                json.dump(cp, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)


def default_key_path(study: str | Path, study_id: str) -> Path:
    """Where ``sirad study create`` puts the key when ``--key`` is not given: outside the study folder."""
    base = Path(os.environ.get("SIRAD_KEYS") or Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
                / "sirad-viewer" / "keys")
    stem = Path(str(study).split("/")[-1]).stem or "study"
    return base / f"{stem}-{study_id[:8]}.key"


def new_study_id() -> str:
    return secrets.token_hex(16)


def protocol_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two protocol dicts, in words (for the tamper report)."""
    out = []
    for k in sorted(set(old) | set(new)):
        if k == "cases":
            a = {c["id"]: c for c in old.get("cases", [])}
            b = {c["id"]: c for c in new.get("cases", [])}
            for cid in sorted(set(a) - set(b)):
                out.append(f"case {cid} removed")
            for cid in sorted(set(b) - set(a)):
                out.append(f"case {cid} added")
            for cid in sorted(set(a) & set(b)):
                for f in sorted(set(a[cid]) | set(b[cid])):
                    if a[cid].get(f) != b[cid].get(f):
                        out.append(f"case {cid} {f}: {a[cid].get(f)!r} -> {b[cid].get(f)!r}")
        elif old.get(k) != new.get(k):
            out.append(f"{k}: {old.get(k)!r} -> {new.get(k)!r}")
    return out
