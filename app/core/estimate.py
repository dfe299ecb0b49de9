"""How long a reading will take, at the rate this model has reached on this library: the window and
the CLI ask before a reading of more than an hour (issue 35)."""

from __future__ import annotations

from dataclasses import dataclass

# A reading longer than this at the expected rate is asked about first.
CONFIRM_ABOVE_S = 3600
# Tokens a second assumed for a model never measured on this library: the built-in model on a slow
# laptop CPU (2 cores, AVX2) reads about 60; a GPU reads thousands.
ASSUMED_RATE = {"cpu": 50.0, "cuda": 1000.0}


def measured_rate(library, engine, infos=None) -> tuple[float, str]:
    """Tokens a second for this model on this library: measured by its finished readings, else assumed;
    with a few words saying which. `infos`: the library's documents as listed for this model
    (`Library.infos(fingerprint=…)`) when the caller has them; else one small query of the readings
    (no document is loaded)."""
    fp = engine.fingerprint
    if infos is not None:
        done = [i for i in infos if i.model_fingerprint == fp and i.status == "ready" and i.seconds > 0]
        tokens, seconds = sum(i.tokens for i in done), sum(i.seconds for i in done)
    else:
        from sqlalchemy import func, select

        from .db import SnapshotRow

        with library.Session() as s:
            tokens, seconds = s.execute(
                select(func.coalesce(func.sum(SnapshotRow.tokens_total), 0), func.coalesce(func.sum(SnapshotRow.seconds), 0.0))
                .where(SnapshotRow.model_fingerprint == fp, SnapshotRow.status == "ready", SnapshotRow.seconds > 0)).one()
    if tokens >= 500 and seconds > 0:
        return tokens / seconds, "measured on earlier readings with this model"
    device = getattr(getattr(engine, "device", None), "type", "cpu")
    return ASSUMED_RATE.get(device, ASSUMED_RATE["cpu"]), "assumed: no reading with this model measured yet"


def duration_text(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"


@dataclass
class Estimate:
    tokens: int  # left to read
    seconds: float
    rate: float  # tokens a second
    how: str  # "measured …" or "assumed …"

    def too_long(self, above: float = CONFIRM_ABOVE_S) -> bool:
        return self.seconds > above

    def text(self, title: str) -> str:
        return (f"{title}: reading {self.tokens:,} tokens will take about {duration_text(self.seconds)} "
                f"at {self.rate:,.0f} tokens/s ({self.how})")


def reading_estimate(library, engine, tokens_left: int, infos=None) -> Estimate:
    rate, how = measured_rate(library, engine, infos)
    left = max(int(tokens_left), 0)
    return Estimate(left, left / rate, rate, how)
