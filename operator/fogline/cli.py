"""The `fogline` command: one entry point whose subcommands forward to the room that owns
them. This module parses only the first word; each room parses its own flags, with the
`UsageParser` below. Standard library only: every image runs through this module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

EXIT_USAGE = 2


class UsageParser(argparse.ArgumentParser):
    """argparse whose bad flags end as one `error: ...` line and exit status 2, without the
    usage block (the subcommand's `--help` has it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message}\n")


@dataclass(frozen=True)
class Subcommand:
    module: str
    summary: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "devcluster": Subcommand(
        "fogline.devcluster.cli", "start, inspect or stop the local real control plane"
    ),
    "run": Subcommand("fogline.controllers.cli", "run the operator against the current cluster"),
    "status": Subcommand("fogline.status", "show ModelTrainings and EdgeDeployments as tables"),
    "demo": Subcommand(
        "fogline.demo", "train, roll out and serve a model on the local control plane"
    ),
    "train": Subcommand("fogline.workloads.trainer.cli", "train, export and evaluate a model"),
    "fetch": Subcommand("fogline.workloads.fetch", "fetch and verify a model artifact"),
    "serve": Subcommand("fogline.workloads.server.cli", "serve an artifact over Open Inference v2"),
}


def usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        "usage: fogline <command> [options]",
        "",
        "Fogline carries a model from GPU training in the cloud to inference on edge nodes.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {sub.summary}" for name, sub in SUBCOMMANDS.items()]
    lines += ["", "Run `fogline <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        from fogline import __version__

        print(f"fogline {__version__}")
        return 0
    sub = SUBCOMMANDS.get(args[0])
    if sub is None:
        print(f"error: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    try:
        module = importlib.import_module(sub.module)
        entry: Callable[[list[str]], int] = module.main
        return entry(args[1:])
    except ModuleNotFoundError as err:
        if (err.name or "fogline").partition(".")[0] == "fogline":
            raise  # a broken installation of fogline itself, not a missing extra
        # Each image installs one extra; a command of another role says which one it needs.
        extra = {"train": "train", "serve": "serve", "fetch": "serve"}.get(args[0], "operator")
        print(
            f"error: `fogline {args[0]}` needs the module {err.name!r}; "
            f"install it with `pip install 'fogline[{extra}]'`",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
