"""``moecomp admin``: API keys (teams'), worker credentials and admin keys, and the database schema, straight on
the database (no API needed)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from moecomp.settings import Settings

if TYPE_CHECKING:
    from moecomp.persistence.database import Database

LOCAL_TEAM = "local"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    admin = subparsers.add_parser("admin", help="create and revoke API keys, migrate the database")
    commands = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    create = commands.add_parser("create-key", help="create a key for a team (created if missing); prints it once")
    create.add_argument("--team", required=True, help="team name")
    create.set_defaults(func=create_key)
    for role, text in (("worker", "a worker credential (for hosts that run workers)"), ("admin", "an admin key")):
        service = commands.add_parser(f"create-{role}-key", help=f"create {text}; prints it once")
        service.add_argument("--label", required=True, help="who holds it: a host, a deployment, a person")
        service.set_defaults(func=create_service_key, role=role)
    revoke = commands.add_parser(
        "revoke-key", help="revoke every key with this prefix (the 8 characters after mc_, mcw_ or mca_)"
    )
    revoke.add_argument("prefix")
    revoke.set_defaults(func=revoke_key)
    migrate = commands.add_parser("migrate", help="bring the database schema up to date (alembic upgrade head)")
    migrate.set_defaults(func=lambda _args: migrate_database(Settings()))


def migrate_database(settings: Settings) -> None:
    from moecomp.persistence.migrate import upgrade  # alembic only when needed

    upgrade(settings.resolved_database_url)


def _database(settings: Settings) -> Database:
    from moecomp.persistence.database import Database

    if not settings.database_url:  # embedded: the database may not exist yet
        migrate_database(settings)
    return Database(settings.resolved_database_url)


def create_key(args: argparse.Namespace) -> int:
    from moecomp.persistence.keys import create_api_key

    db = _database(Settings())
    with db.session() as session:
        print(create_api_key(session, args.team))
    return 0


def create_service_key(args: argparse.Namespace) -> int:
    from moecomp.persistence.service_keys import Role
    from moecomp.persistence.service_keys import create_service_key as create

    db = _database(Settings())
    with db.session() as session:
        print(create(session, Role(args.role), args.label))
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    from moecomp.persistence.keys import revoke_api_key
    from moecomp.persistence.service_keys import revoke_service_key

    db = _database(Settings())
    with db.session() as session:
        if args.prefix.startswith(("mcw_", "mca_")):
            count = revoke_service_key(session, args.prefix)
        else:
            count = revoke_api_key(session, args.prefix) + revoke_service_key(session, args.prefix)
    print(f"revoked {count} key(s)")
    return 0 if count else 1


def local_key_path(settings: Settings) -> Path:
    return settings.data_dir / "local-key"


def ensure_local_key(settings: Settings) -> tuple[str, bool]:
    """The embedded mode's key, created on first start in ``data_dir/local-key`` (mode 0600); (key, created)."""
    path = local_key_path(settings)
    if path.exists():
        return path.read_text().strip(), False
    from moecomp.persistence.keys import create_api_key

    db = _database(settings)
    with db.session() as session:
        key = create_api_key(session, LOCAL_TEAM)
    db.engine.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True
