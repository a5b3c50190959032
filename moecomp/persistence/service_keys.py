"""Keys that belong to no team: worker credentials (``mcw_...``) and administrator keys (``mca_...``).

A worker credential opens the worker routes (/v1/worker/...: an upload's bytes, artifact uploads) and nothing of
the team API; an admin key opens the administration routes (GET /v1/workers). Like team keys (keys.py) they are
``<kind>_<prefix8>_<secret>``, stored as the sha256 of the whole key, looked up by prefix, compared in constant
time; the secret is shown once, at creation, and never stored.
"""

from __future__ import annotations

import hmac
import re
import secrets
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from moecomp.persistence.database import changed_rows
from moecomp.persistence.keys import KEY_RE, hash_key
from moecomp.persistence.models import ServiceKey, utcnow


class Role(StrEnum):
    worker = "worker"
    admin = "admin"


KIND = {Role.worker: "mcw", Role.admin: "mca"}
SERVICE_KEY_RE = re.compile(r"^(mcw|mca)_([a-z0-9]{8})_([A-Za-z0-9_-]{20,128})$")


def key_kind(key: str | None) -> str | None:
    """What a key looks like (``team``, ``worker``, ``admin``) from its shape alone; None for neither."""
    if KEY_RE.match(key or ""):
        return "team"
    match = SERVICE_KEY_RE.match(key or "")
    if match is None:
        return None
    return Role.worker.value if match.group(1) == KIND[Role.worker] else Role.admin.value


def create_service_key(session: Session, role: Role, label: str) -> str:
    """Create a key of ``role`` held by ``label``, commit, and return the key once."""
    if not label.strip() or len(label) > 100:
        raise ValueError("the label must be 1 to 100 characters")
    prefix = secrets.token_hex(4)
    key = f"{KIND[role]}_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ServiceKey(role=role.value, label=label, prefix=prefix, secret_hash=hash_key(key)))
    session.commit()
    return key


def service_key(session: Session, key: str | None) -> ServiceKey | None:
    """The live service key ``key``, or None for a malformed, unknown or revoked one."""
    match = SERVICE_KEY_RE.match(key or "")
    if match is None:
        return None
    role = Role.worker if match.group(1) == KIND[Role.worker] else Role.admin
    digest = hash_key(key or "")
    rows = session.scalars(
        select(ServiceKey).where(
            ServiceKey.prefix == match.group(2), ServiceKey.role == role.value, ServiceKey.revoked_at.is_(None)
        )
    )
    return next((row for row in rows if hmac.compare_digest(row.secret_hash, digest)), None)


def revoke_service_key(session: Session, prefix: str) -> int:
    """Revoke every live service key with this prefix (``mcw_<prefix>_...`` or the bare 8 characters)."""
    prefix = re.sub(r"^mc[wa]_", "", prefix).split("_", 1)[0]
    stmt = update(ServiceKey).where(ServiceKey.prefix == prefix, ServiceKey.revoked_at.is_(None))
    changed = changed_rows(session, stmt.values(revoked_at=utcnow()))
    session.commit()
    return changed
