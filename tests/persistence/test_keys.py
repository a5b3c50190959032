"""API keys: format, lookup by prefix + constant-time hash check, revocation, team reuse."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from moecomp.persistence.database import Database
from moecomp.persistence.keys import KEY_RE, create_api_key, hash_key, revoke_api_key, team_for_key
from moecomp.persistence.migrate import upgrade
from moecomp.persistence.models import ApiKey, Team


@pytest.fixture
def db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    return Database(url)


def test_a_new_key_finds_its_team_and_only_its_hash_is_stored(db: Database) -> None:
    with db.session() as session:
        key = create_api_key(session, "research")
        assert KEY_RE.match(key)
        team = team_for_key(session, key)
        assert team is not None and team.name == "research"
        stored = session.scalars(select(ApiKey)).one()
        assert stored.secret_hash == hash_key(key) and key.split("_")[2] not in stored.secret_hash
        assert stored.prefix == key.split("_")[1]


def test_second_key_reuses_the_team(db: Database) -> None:
    with db.session() as session:
        first, second = create_api_key(session, "research"), create_api_key(session, "research")
        assert first != second
        assert session.scalar(select(func.count()).select_from(Team)) == 1
        a, b = team_for_key(session, first), team_for_key(session, second)
        assert a is not None and b is not None and a.id == b.id


@pytest.mark.parametrize("bad", ["", "mc_", "mc_short_secret", "xx_abcdefgh_" + "a" * 40])
def test_malformed_keys_find_nothing(db: Database, bad: str) -> None:
    with db.session() as session:
        create_api_key(session, "research")
        assert team_for_key(session, bad) is None


def test_wrong_secret_and_revoked_keys_find_nothing(db: Database) -> None:
    with db.session() as session:
        key = create_api_key(session, "research")
        other = create_api_key(session, "research")
        prefix = key.split("_")[1]
        assert team_for_key(session, f"mc_{prefix}_{'A' * 43}") is None
        assert revoke_api_key(session, f"mc_{prefix}") == 1
        assert team_for_key(session, key) is None
        assert team_for_key(session, other) is not None  # only that key
        assert revoke_api_key(session, prefix) == 0  # already revoked


def test_team_name_is_checked(db: Database) -> None:
    with db.session() as session, pytest.raises(ValueError):
        create_api_key(session, "  ")
