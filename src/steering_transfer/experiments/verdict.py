"""A cell's verdict: does the mapped vector do what the target's own vector does, beyond noise?

Written once for every steering cell, and re-run on recorded figures (the re-judging test) so a
committed leaderboard always agrees with the rule in code. The inputs are coherent success
rates on the test split, each from the same prompts:

* ``native``: the target's own vector at the chosen strength;
* ``mapped``: the mapped vector (the reading chosen on validation) at the same strength;
* ``noise``: the noise ensemble at the mapped vector's norm and strength (each vector is judged
  against noise of its own size), pooled over its K random directions, with ``noise_worst``
  the best rate any single random direction reached: requiring mapped above it is a rank test
  (the mapped direction must beat all K random ones, p = 1 / (K + 1));
* ``native_noise``: the ensemble at the native norm and native's strength (is native itself
  above noise?);
* ``paired_p``: exact McNemar p-value, mapped vs the per-prompt majority outcome of the
  ensemble (one-sided: mapped succeeds more often).

Rule (``VERDICTS``):

* ``uninformative`` — no strength separated native from noise on validation, or native is not
  above the native-norm noise ensemble at its own strength on the test split (lower bound of
  native <= upper bound of noise): the cell cannot tell transfer from noise either way;
* ``transfer`` — mapped beats noise (its interval's lower bound above the reference's upper
  bound, above every single random direction, and paired p < ``ALPHA``) and reaches at least
  ``NATIVE_FRACTION`` of native;
* ``partial`` — mapped beats noise but stays below that fraction of native;
* ``none`` — otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import SteeringTransferError
from ..metrics import Rate

VERDICTS = ("transfer", "partial", "none", "uninformative")
#: Verdicts that count as "beats its noise ensemble" (the default steering bar).
BEATS_NOISE = ("transfer", "partial")
NATIVE_FRACTION = 0.8
ALPHA = 0.05


@dataclass(frozen=True)
class Evidence:
    """What a verdict is computed from (all on the test split, coherent successes)."""

    native: Rate
    mapped: Rate
    noise: Rate  # the reference ensemble (pooled), the higher of native-norm and mapped-norm
    noise_worst: float  # highest success of any single random direction at either norm
    paired_p: float
    separating: bool = True  # validation found a strength where native beats noise
    # the native-norm ensemble at native's own strength (the mapped vector's strength may
    # differ); ``None``: the same as ``noise``
    native_noise: Rate | None = None

    @property
    def margin_low(self) -> float:
        """Evidence for ranking: mapped's lower bound minus the noise upper bound."""
        return self.mapped.low - self.noise.high

    @property
    def beats_noise(self) -> bool:
        return (
            self.mapped.low > self.noise.high
            and self.mapped.rate > self.noise_worst
            and self.paired_p < ALPHA
        )

    @property
    def native_informative(self) -> bool:
        reference = self.native_noise if self.native_noise is not None else self.noise
        return self.separating and self.native.low > reference.high

    def verdict(self) -> str:
        if not self.native_informative:
            return "uninformative"
        if not self.beats_noise:
            return "none"
        if self.mapped.rate >= NATIVE_FRACTION * self.native.rate:
            return "transfer"
        return "partial"

    def to_dict(self) -> dict[str, Any]:
        return {
            "native": self.native.to_dict(),
            "mapped": self.mapped.to_dict(),
            "noise": self.noise.to_dict(),
            "noise_worst": self.noise_worst,
            "paired_p": self.paired_p,
            "separating": self.separating,
            "native_noise": None if self.native_noise is None else self.native_noise.to_dict(),
            "verdict": self.verdict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evidence:
        """The evidence recorded with a row (``to_dict``), for re-judging committed results."""
        try:
            return cls(
                native=_rate(data["native"]),
                mapped=_rate(data["mapped"]),
                noise=_rate(data["noise"]),
                noise_worst=float(data["noise_worst"]),
                paired_p=float(data["paired_p"]),
                separating=bool(data.get("separating", True)),
                native_noise=(
                    None if data.get("native_noise") is None else _rate(data["native_noise"])
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SteeringTransferError(
                f"recorded evidence is malformed ({exc}); re-run the cell to record it again"
            ) from exc


def _rate(data: dict[str, Any]) -> Rate:
    return Rate(successes=int(data["successes"]), n=int(data["n"]))


def check_verdict(name: str, param: str) -> str:
    if name not in VERDICTS:
        raise SteeringTransferError(f"{param}={name!r}; use one of {', '.join(VERDICTS)}")
    return name
