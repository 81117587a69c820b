"""The `fogline` command dispatches to its rooms and fails clearly on bad input."""

from __future__ import annotations

import pytest

from fogline.cli import SUBCOMMANDS, main

pytestmark = pytest.mark.unit


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "error: unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["devcluster", "up", "--gpu-nodes", "-1"],
        ["devcluster", "up", "--local-nodes", "--local-edge-sites", "0"],
    ],
)
def test_devcluster_rejects_negative_counts(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error:")
