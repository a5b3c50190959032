"""API keys: ``mc_<prefix8>_<secret>``, stored as the sha256 of the whole key, looked up by prefix.

The prefix is public (it identifies the key in listings and in ``revoke``); the secret is never stored.
Comparison is constant-time (hmac.compare_digest) so a timing side channel cannot reveal the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from moecomp.persistence.database import changed_rows
from moecomp.persistence.models import ApiKey, Team, utcnow

KEY_RE = re.compile(r"^mc_([a-z0-9]{8})_([A-Za-z0-9_-]{20,128})$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_team(session: Session, team_name: str) -> Team:
    team = session.scalar(select(Team).where(Team.name == team_name))
    if team is None:
        team = Team(name=team_name)
        session.add(team)
        session.flush()
    return team


def create_api_key(session: Session, team_name: str) -> str:
    """Create a key for ``team_name`` (creating the team if missing), commit, and return the key once."""
    if not team_name.strip() or len(team_name) > 100:
        raise ValueError("team name must be 1 to 100 characters")
    team = get_or_create_team(session, team_name)
    prefix = secrets.token_hex(4)  # 8 lowercase hex characters
    key = f"mc_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(team_id=team.id, prefix=prefix, secret_hash=hash_key(key)))
    session.commit()
    return key


# Built once: every API request runs it, and building the statement cost about as much as running it.
_LIVE_KEYS_WITH_PREFIX = (
    select(ApiKey.secret_hash, Team)
    .join(Team, Team.id == ApiKey.team_id)
    .where(ApiKey.prefix == bindparam("prefix"), ApiKey.revoked_at.is_(None))
)


def team_for_key(session: Session, key: str | None) -> Team | None:
    """The team owning ``key``, or None for a malformed, unknown or revoked key."""
    match = KEY_RE.match(key or "")
    if match is None:
        return None
    digest = hash_key(key or "")
    rows = session.execute(_LIVE_KEYS_WITH_PREFIX, {"prefix": match.group(1)})
    for secret_hash, team in rows:
        if hmac.compare_digest(secret_hash, digest):
            return team
    return None


def revoke_api_key(session: Session, prefix: str) -> int:
    """Revoke every live key with this prefix (``mc_<prefix>_...`` or the bare 8 characters); returns how many."""
    prefix = prefix.removeprefix("mc_").split("_", 1)[0]
    changed = changed_rows(
        session, update(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    session.commit()
    return changed
