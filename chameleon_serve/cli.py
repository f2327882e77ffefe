"""`chameleon-serve` command line: one entry point, one subcommand per area.

Each area owns its subcommand's arguments and implementation; this file only dispatches, and
imports an area lazily so `chameleon-serve chat` never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help). Each module defines `add_arguments(parser)` and `run(args) -> int`.
SUBCOMMANDS = {
    "serve": ("chameleon_serve.server.cli", "serve a checkpoint over HTTP (the demo model by default)"),
    "chat": ("chameleon_serve.clients.cli", "chat with a running server: streams text, saves images"),
    "convert": ("chameleon_serve.model.convert", "convert a checkpoint between Meta and HF formats"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="chameleon-serve", description="Serve and use mixed-modal Chameleon models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported (a client-only install has no torch).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
