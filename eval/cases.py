"""The evaluation case: one edit and the probes that measure it, whatever the data set."""

from __future__ import annotations

from dataclasses import dataclass, field

from memedit.edit import Edit

METRICS = ("reliability", "generality", "locality", "portability")


@dataclass(frozen=True)
class Probe:
    """One question asked after the edit.

    ``answers`` are the accepted answers, the first one canonical. For reliability,
    generality and portability they are what the edited model should say; for locality
    they are the data set's ground truth, but locality is scored against what the
    unedited model said (the answers are kept for reference only).
    """

    prompt: str
    answers: tuple[str, ...]
    metric: str
    subtype: str = ""


@dataclass(frozen=True)
class Case:
    """An edit to store and the probes that measure it; ``case_id`` is unique within its data set."""

    case_id: str
    edit: Edit
    probes: tuple[Probe, ...] = field(default_factory=tuple)

    def by_metric(self, metric: str) -> list[Probe]:
        return [p for p in self.probes if p.metric == metric]
