"""The ``steering-transfer`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    from .mappers import available_mappers
    from .packaged import PACKAGED_MODELS, packaged_available

    print("mappers:", ", ".join(available_mappers()))
    for name, entry in sorted(PACKAGED_MODELS.items()):
        state = "installed" if packaged_available(name) else f"missing ({entry.pip_command})"
        print(f"packaged model {name}: {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steering-transfer",
        description="Transfer activation-space interventions between language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="list registered mappers and packaged models")
    info.set_defaults(func=_cmd_info)
    try:
        from .zoo import add_zoo_commands
    except ImportError:  # the zoo module is optional while it is being built
        pass
    else:
        add_zoo_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
