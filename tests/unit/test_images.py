"""The Dockerfiles in images/, checked without a Docker engine: pinned slim bases, a
numeric non-root user, only the extras each image needs, and entrypoints that exist."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from fogline.cli import SUBCOMMANDS
from fogline.cli import main as fogline_main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
# image -> (the extras it installs, the `fogline` subcommand it runs)
IMAGES = {
    "operator": ({"operator"}, "run"),
    "trainer": ({"train"}, "train"),
    "server": ({"serve"}, "serve"),
}


def instructions(image: str) -> list[tuple[str, str]]:
    text = (REPO / "images" / f"{image}.Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def entry_command(image: str) -> list[str]:
    found = dict(instructions(image))
    command: list[str] = json.loads(found["ENTRYPOINT"])
    if "CMD" in found:
        command += json.loads(found["CMD"])
    return command


@pytest.mark.parametrize("image", IMAGES)
def test_base_image_is_a_pinned_slim_python(image: str) -> None:
    args = {
        v.split("=", 1)[0]: v.split("=", 1)[1]
        for k, v in instructions(image)
        if k == "ARG" and "=" in v
    }
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
    froms = [v for k, v in instructions(image) if k == "FROM"]
    assert froms and all(v.startswith("${PYTHON_IMAGE}") for v in froms)


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_numeric_non_root_user(image: str) -> None:
    users = [v for k, v in instructions(image) if k == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0)


@pytest.mark.parametrize("image", IMAGES)
def test_installs_only_the_extras_it_needs_and_they_exist(image: str) -> None:
    defined = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    installs = [v for k, v in instructions(image) if k == "RUN" and "pip install" in v]
    assert len(installs) == 1
    match = re.search(r'"fogline(?:\[([a-z,]+)\])? @ file://', installs[0])
    assert match, installs[0]
    extras = set(match.group(1).split(",")) if match.group(1) else set()
    assert extras == IMAGES[image][0]
    assert extras <= defined - {"dev"}


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_is_a_fogline_command_whose_help_runs(
    image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command = entry_command(image)
    assert command[0] == "fogline" and command[1] == IMAGES[image][1]
    assert command[1] in SUBCOMMANDS
    try:
        code: object = fogline_main([command[1], "--help"])
    except SystemExit as exited:  # argparse exits; some commands return instead
        code = exited.code
    assert code == 0
    assert "usage:" in capsys.readouterr().out


def test_operator_image_default_arguments_parse() -> None:
    from fogline.controllers.cli import _parser

    args = _parser().parse_args(entry_command("operator")[2:])
    assert args.all_namespaces and not args.namespace


@pytest.mark.parametrize("image", IMAGES)
def test_copied_sources_exist(image: str) -> None:
    for kind, value in instructions(image):
        if kind == "COPY" and not value.startswith("--from"):
            *sources, _ = value.split()
            assert all((REPO / source).exists() for source in sources), value
