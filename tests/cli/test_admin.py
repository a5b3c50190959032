"""`moecomp admin` on the embedded SQLite database (created and migrated on first use)."""

from __future__ import annotations

import pytest

from moecomp.cli.admin import ensure_local_key, local_key_path
from moecomp.cli.main import main
from moecomp.persistence.database import Database
from moecomp.persistence.keys import KEY_RE, team_for_key
from moecomp.settings import Settings


@pytest.fixture
def embedded(tmp_path, monkeypatch) -> Settings:
    for name in ("MOECOMP_DATABASE_URL", "MOECOMP_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOECOMP_DATA_DIR", str(tmp_path / "data"))
    return Settings()


def test_create_then_revoke_a_key(embedded, capsys):
    assert main(["admin", "create-key", "--team", "ml-opt"]) == 0
    key = capsys.readouterr().out.strip()
    assert KEY_RE.match(key)
    db = Database(embedded.resolved_database_url)
    with db.session() as s:
        assert team_for_key(s, key).name == "ml-opt"
    assert main(["admin", "revoke-key", key.split("_")[1]]) == 0
    with db.session() as s:
        assert team_for_key(s, key) is None
    assert main(["admin", "revoke-key", "00000000"]) == 1  # nothing to revoke: a non-zero exit
    db.engine.dispose()


def test_local_key_is_created_once_and_private(embedded):
    key, created = ensure_local_key(embedded)
    again, created_again = ensure_local_key(embedded)
    assert created and not created_again and key == again
    assert local_key_path(embedded).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("role", ["worker", "admin"])
def test_create_then_revoke_a_service_key(embedded, capsys, role):
    from moecomp.persistence.service_keys import key_kind, service_key

    assert main(["admin", f"create-{role}-key", "--label", "gpu-host-1"]) == 0
    key = capsys.readouterr().out.strip()
    assert key_kind(key) == role
    db = Database(embedded.resolved_database_url)
    with db.session() as s:
        found = service_key(s, key)
        assert (found.role, found.label) == (role, "gpu-host-1")
        assert team_for_key(s, key) is None  # never a team's key
    assert main(["admin", "revoke-key", "_".join(key.split("_")[:2])]) == 0  # mcw_<prefix> or mca_<prefix>
    with db.session() as s:
        assert service_key(s, key) is None
    db.engine.dispose()
