"""The per-project de-identification secret and what is derived from it.

Everything that must be *consistent* across exports of one project (new UIDs, patient
pseudonyms, per-patient date shifts) is an HMAC-SHA256 of the original value under a secret key.
Without the key, someone who holds an original UID cannot compute its replacement (a plain hash
or a public salt would let them), and the key never travels with the output.

The key is a file of 64 hex characters (32 random bytes), created on first use with mode 0600.
Default location: ``$SIRAD_DEID_KEY`` if set, else ``$XDG_CONFIG_HOME/sirad/deid.key``
(``~/.config/sirad/deid.key``). Keep one key per project; a new key gives unlinkable output.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import uuid
from pathlib import Path

from sirad_viewer.errors import ExportError

log = logging.getLogger(__name__)

#: Root for derived UIDs: ``2.25.<128-bit integer>`` (PS3.5 B.2, UUID-derived UID).
UID_ROOT = "2.25."
#: Dates are shifted back by 1..MAX_SHIFT_DAYS days, one offset per patient.
MAX_SHIFT_DAYS = 3650
_MIN_KEY_BYTES = 16


def default_key_path() -> Path:
    """Where the project key lives when ``--key`` is not given."""
    env = os.environ.get("SIRAD_DEID_KEY")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "sirad" / "deid.key"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def load_or_create_key(path: str | Path | None = None, *, outside: str | Path | None = None) -> tuple[bytes, Path, bool]:
    """Read the key file at ``path`` (default :func:`default_key_path`), creating it if missing.

    Parameters
    ----------
    path : str or Path, optional
        Key file.
    outside : str or Path, optional
        The output; a key inside it is refused (it would ship the secret with the data).

    Returns
    -------
    key : bytes
    path : Path
        The key file used.
    created : bool
        True when a new key was written.
    """
    p = Path(path).expanduser() if path is not None else default_key_path()
    if outside is not None and _inside(p, Path(outside)):
        raise ExportError("the de-identification key must not be stored inside the output; "
                          "give --key a path outside it", code="key_inside_output", path=p)
    created = False
    if not p.exists():
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
        except FileExistsError:
            pass  # another process made it first: read theirs
        except OSError as exc:
            raise ExportError(f"the de-identification key cannot be created: {exc}", code="bad_key", path=p) from exc
        else:
            created = True
            log.info("created a new de-identification key at %s", p)
    try:
        text = p.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportError(f"is not a readable de-identification key (expected hex text): {exc}",
                          code="bad_key", path=p) from exc
    if len(key) < _MIN_KEY_BYTES:
        raise ExportError(f"the key has {len(key)} bytes; at least {_MIN_KEY_BYTES} are needed",
                          code="bad_key", path=p)
    return key, p, created


def _mac(key: bytes, purpose: str, value: str) -> bytes:
    return hmac.new(key, f"{purpose}\x00{value}".encode("utf-8", "surrogateescape"), hashlib.sha256).digest()


def remap_uid(uid: str, key: bytes) -> str:
    """A new UID for ``uid``: the same for the same key, unpredictable without it.

    ``2.25.`` followed by the decimal value of a version-4-formatted UUID built from
    HMAC-SHA256(key, uid); at most 44 characters.
    """
    uid = str(uid).strip().rstrip("\x00")
    if not uid:
        return uid
    return UID_ROOT + str(uuid.UUID(bytes=_mac(key, "uid", uid)[:16], version=4).int)


def pseudonym(value: str, key: bytes, *, prefix: str = "SIRAD-") -> str:
    """A stable, keyed pseudonym for an identifier (e.g. PatientID); 16 characters."""
    return prefix + _mac(key, "id", str(value).strip()).hex()[:10].upper()


def date_shift_days(patient: str, key: bytes) -> int:
    """Days to move every date of ``patient`` back by: 1..:data:`MAX_SHIFT_DAYS`, stable per patient."""
    return 1 + int.from_bytes(_mac(key, "date-shift", str(patient).strip())[:8], "big") % MAX_SHIFT_DAYS


__all__ = ["default_key_path", "load_or_create_key", "remap_uid", "pseudonym", "date_shift_days",
           "UID_ROOT", "MAX_SHIFT_DAYS"]
