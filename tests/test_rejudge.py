"""The committed leaderboard agrees with the rule in code (no models: recorded figures only).

Every backdoor transfer row and every refusal row of ``reports/results.json`` records the
evidence its verdict came from; re-judging that evidence with today's rule
(experiments/verdict.py) and today's bars (fixtures/bench.toml) must give the verdict and the
pass/fail the row records. A row whose mapped vector did only as well as its noise ensemble must
fail its bars: the rule cannot be passed by noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steering_transfer.experiments.verdict import BEATS_NOISE, Evidence
from steering_transfer.suite.cells.backdoor import judge_row
from steering_transfer.suite.matrix import PairSpec, load_matrix

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "reports" / "results.json"
MATRIX = ROOT / "fixtures" / "bench.toml"


def evidence_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of ``transfer:*`` and ``refusal:transfer`` tables whose config records the
    verdict's evidence."""
    rows = json.loads(path.read_text())["rows"]
    return [
        row for row in rows
        if (row["table"].startswith("transfer:") or row["table"] == "refusal:transfer")
        and "evidence" in row.get("config", {})
    ]


def pair_of(row: dict[str, Any], pairs: list[PairSpec]) -> PairSpec:
    """The matrix pair that produced ``row``: same task, organisms, layers and alignment, and
    the cell id (which carries the variant) of the row's mapper."""
    config = row["config"]
    found = [
        p for p in pairs
        if p.task == config["task"]
        and (p.source, p.target) == (config["source"], config["target"])
        and (p.source_layer, p.target_layer) == (config["source_layer"], config["target_layer"])
        and p.cell_config().alignment == config["alignment"]
        and p.cell_id(config["mapper"]) == row["cell_id"]
    ]
    assert len(found) == 1, (
        f"row {row['cell_id']} ({row['table']}) matches {len(found)} pairs of {MATRIX.name}; "
        "a committed row must come from exactly one pair of the matrix"
    )
    return found[0]


def _with_noise_as_mapped(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as if its mapped vector had scored exactly its noise reference (pooled rate),
    with no single random direction doing worse than that."""
    evidence = dict(row["config"]["evidence"])
    noise = evidence["noise"]
    evidence["mapped"] = noise
    evidence["noise_worst"] = noise["successes"] / noise["n"]
    return {**row, "config": {**row["config"], "evidence": evidence}}


def _rows_and_pairs() -> list[tuple[dict[str, Any], PairSpec]]:
    rows = evidence_rows(RESULTS)
    assert rows, (
        f"{RESULTS.relative_to(ROOT)} has no transfer row with recorded evidence; run the "
        "benchmark (make bench) and commit its reports"
    )
    pairs = load_matrix(MATRIX)
    return [(row, pair_of(row, pairs)) for row in rows]


def test_recorded_verdicts_and_outcomes_agree_with_the_rule_and_the_bars() -> None:
    problems = []
    for row, pair in _rows_and_pairs():
        config = row["config"]
        mapper = config["mapper"]
        bars = pair.thresholds_for(mapper)
        evidence = Evidence.from_dict(config["evidence"])
        again = judge_row(row, bars)
        if evidence.verdict() != config["verdict"]:
            problems.append(
                f"{row['cell_id']}: recorded verdict {config['verdict']}, the rule gives "
                f"{evidence.verdict()}"
            )
        if config["evidence"].get("verdict", config["verdict"]) != config["verdict"]:
            problems.append(f"{row['cell_id']}: the evidence and the row disagree on the verdict")
        if row["columns"].get("verdict", config["verdict"]) != config["verdict"]:
            problems.append(f"{row['cell_id']}: the table column shows another verdict")
        if again.passed != config["passed"]:
            problems.append(
                f"{row['cell_id']}: recorded passed={config['passed']} with bars "
                f"{config.get('thresholds')}, re-judged passed={again.passed} with "
                f"{bars.to_dict()} ({again.message})"
            )
        induced = config.get("induced_evidence")  # refusal: induced refusal's own verdict
        if induced is not None and Evidence.from_dict(induced).verdict() != induced["verdict"]:
            problems.append(f"{row['cell_id']}: induced refusal's verdict disagrees with its "
                            "evidence")
        induce = config.get("induce") or {}
        if "evidence" in induce and Evidence.from_dict(induce["evidence"]).verdict() != (
            induce["verdict"]
        ):
            problems.append(f"{row['cell_id']}: the induce test's verdict disagrees with its "
                            "evidence")
    assert not problems, "\n".join(problems)


def test_a_mapped_vector_that_scores_like_its_noise_fails_every_recorded_cell() -> None:
    problems = []
    for row, pair in _rows_and_pairs():
        bars = pair.thresholds_for(row["config"]["mapper"])
        noisy = _with_noise_as_mapped(row)
        verdict = Evidence.from_dict(noisy["config"]["evidence"]).verdict()
        again = judge_row(noisy, bars)
        if again.passed or verdict in BEATS_NOISE:
            problems.append(f"{row['cell_id']}: noise as mapped gives {verdict} and "
                            f"passed={again.passed} ({again.message})")
    assert not problems, "\n".join(problems)
