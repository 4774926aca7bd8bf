from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trio_sessions._cli import main

BROKEN = """
from trio_sessions import BytesStorage

class NoTtl(BytesStorage):
    def __init__(self, clock):
        super().__init__()
        self.data = {}

    async def load(self, session_id):
        return self.data.get(session_id)

    async def store(self, session_id, data, ttl):
        self.data[session_id] = data

    async def delete(self, session_id):
        self.data.pop(session_id, None)
"""


def test_check_passes_the_builtin_storages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--max-examples", "10"]) == 0
    out = capsys.readouterr().out
    assert "== MemoryStorage" in out
    assert "FAIL" not in out


def test_check_reports_a_broken_storage(tmp_path: Path) -> None:
    (tmp_path / "brokenstore.py").write_text(BROKEN)
    result = subprocess.run(
        [sys.executable, "-m", "trio_sessions", "check", "brokenstore:NoTtl", "--only", "ttl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "FAIL  ttl" in result.stdout
    assert "a session outlived its ttl" in result.stdout
    assert result.stdout.rstrip().endswith("0 passed, 1 failed")


def test_check_refuses_a_bad_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="MODULE:FACTORY"):
        main(["check", "nocolon"])
    with pytest.raises(SystemExit, match="cannot import"):
        main(["check", "no_such_module_xyz:f"])
    assert main(["check", "--only", "nope"]) == 2
