"""The `moecomp` program: its commands, and that client commands start without torch."""

from __future__ import annotations

import subprocess
import sys

from moecomp.cli.main import LIBRARY_COMMANDS, build_parser


def test_every_command_is_registered():
    parser = build_parser([])
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"serve", "worker", "admin", "submit", "status", "watch", "download", *LIBRARY_COMMANDS} <= set(sub.choices)


def test_client_commands_do_not_import_torch():
    code = (
        "import sys; from moecomp.cli.main import build_parser; "
        "build_parser(['status', 'x']).parse_args(['status', 'x']); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_worker_command_line_is_prefork_one_job_per_process():
    from moecomp.cli.worker import celery_argv

    args = build_parser(["worker"]).parse_args(["worker", "-c", "3"])
    argv = celery_argv(args, "moecomp")
    assert "--pool=prefork" in argv and "--concurrency=3" in argv and "--prefetch-multiplier=1" in argv
    assert "--queues=moecomp" in argv
