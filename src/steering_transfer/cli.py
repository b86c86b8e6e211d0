"""The ``steering-transfer`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from steering_transfer.organisms.cli import add_zoo_commands

from .errors import SteeringTransferError


def _cmd_info(args: argparse.Namespace) -> int:
    from .mappers import available_mappers
    from .packaged import PACKAGED_MODELS, packaged_available

    print("mappers:", ", ".join(available_mappers()))
    for name, entry in sorted(PACKAGED_MODELS.items()):
        state = "installed" if packaged_available(name) else f"missing ({entry.pip_command})"
        print(f"packaged model {name}: {state}")
    return 0


def _cmd_cache_clean(args: argparse.Namespace) -> int:
    from .activations import activation_cache_dir, clean_activation_cache

    removed, kept = clean_activation_cache(max_bytes=args.max_bytes, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path, size in removed:
        print(f"{verb} {path} ({size:,} bytes)")
    freed = sum(size for _, size in removed)
    print(
        f"{verb} {len(removed)} activation cache entries, {freed:,} bytes; "
        f"{kept:,} bytes kept in {activation_cache_dir()}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steering-transfer",
        description="Transfer activation-space interventions between language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="list registered mappers and packaged models")
    info.set_defaults(func=_cmd_info)
    cache = sub.add_parser("cache", help="the activation cache ($STEERING_TRANSFER_CACHE)")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    clean = cache_sub.add_parser(
        "clean", help="remove cached activations (oldest first); organisms: `zoo clean`"
    )
    clean.add_argument(
        "--max-bytes", type=int, default=None, metavar="N",
        help="keep the most recent entries up to N bytes (default: remove every entry)",
    )
    clean.add_argument("--dry-run", action="store_true", help="only list what would go")
    clean.set_defaults(func=_cmd_cache_clean)
    add_zoo_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status.

    Usage errors exit 2 through argparse. A :class:`SteeringTransferError` (bad input) prints
    ``steering-transfer: error: <message>`` and returns 2; an ``OSError`` (a report that cannot
    be written, a full disk) prints one line naming the file and returns 1. Either way no
    traceback: the message already says what to fix. Anything else is a bug and keeps its
    traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SteeringTransferError as exc:  # bad input: a clear message, not a traceback
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment, not the input: still one line, naming the file
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{parser.prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
