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


# What the server-side commands need beyond the client install (the `server` extra).
SERVER_MODULES = {"torch", "numpy", "safetensors", "tokenizers", "yaml", "tqdm", "fastapi", "starlette",
                  "uvicorn", "pydantic", "prometheus_client"}


def load_subcommand(name: str):
    """The subcommand's module, or a clear message when this install lacks what it needs."""
    try:
        return importlib.import_module(SUBCOMMANDS[name][0])
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        print(f"chameleon-serve {name}: this install has no '{e.name}'. The {name} command needs the server "
              "extra: pip install 'chameleon-serve[server]' (on a CPU-only machine install a CPU torch first).",
              file=sys.stderr)
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="chameleon-serve", description="Serve and use mixed-modal Chameleon models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported (a client-only install has no torch).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            load_subcommand(name).add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(load_subcommand(args.command).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
