"""The papers' claims as data: what each paper says its variant achieves against a reference.

A :class:`Claim` names a subject variant, a reference variant, how their rows are paired
(:data:`PAIRINGS`) and the relation the paired score differences must satisfy
(:data:`RELATIONS`, with a margin in score points), optionally a parameter-ratio condition.
``lorabench report`` checks every registered claim on the runs present
(:mod:`lorabench.reports.claims`); that module knows the relation kinds and pairing rules, never
a variant's name, so the built-in claims live here beside the variants they are about.

A plugin adds its own claim with ``CLAIMS.add(Claim(...))`` or through the ``lorabench.claims``
entry-point group (an entry point loading to a :class:`Claim`, or to a function that registers
claims when called).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lorabench.registry import Registry

# How the subject's paired difference (subject minus reference, in points, positive = better)
# must lie:
#   at_least:   subject >= reference - margin (non-inferiority; margin 0: "at least as good")
#   equivalent: |subject - reference| <= margin (two-sided equivalence)
RELATIONS = ("at_least", "equivalent")
# Which subject row is compared with which reference row (on the same task, data, model, budget):
#   equal_rank:   the same nominal rank
#   equal_params: the same parameter budget within ``param_tolerance`` (an adaptive-rank row
#                 counts at its final rank)
#   eval_rank:    one training evaluated at every rank b (``rank_scores``) against the
#                 reference trained at rank b
#   each:         every subject row with every reference row (``subject_rank`` and
#                 ``reference_rank`` narrow them)
PAIRINGS = ("equal_rank", "equal_params", "eval_rank", "each")


@dataclass(frozen=True)
class Claim:
    """One paper's claim about its variant, in a form the report can test.

    Attributes:
        id: the registry name ("dora-vs-lora").
        text: the claim in one sentence, as the report prints it.
        citation: the paper ("Liu et al. 2024, DoRA, ICML").
        subject: the registry name of the variant the claim is about.
        reference: the registry name of the variant it is compared with (a reference method
            such as full fine-tuning counts: it need not be registered for the claim to be
            listed; the report then says which runs are missing).
        relation: one of :data:`RELATIONS`.
        margin: score points the relation allows (one point: 1 on a metric printed x100,
            accuracy; 0.01 on one printed as is, Matthews correlation).
        pairing: one of :data:`PAIRINGS`.
        subject_rank: compare only the subject's rows at this nominal rank (None: every rank).
        reference_rank: compare only the reference's rows at this nominal rank (None: every).
        min_param_ratio: the reference must train at least this many times the subject's adapter
            parameters (VeRA's "10x fewer"); a pair that misses it does not hold, whatever the
            scores. None: no condition.
        param_tolerance: for ``pairing="equal_params"``, the relative difference of parameter
            budgets still counted as equal.
    """

    id: str
    text: str
    citation: str
    subject: str
    reference: str
    relation: str
    margin: float = 0.0
    pairing: str = "equal_rank"
    subject_rank: int | None = None
    reference_rank: int | None = None
    min_param_ratio: float | None = None
    param_tolerance: float = 0.05

    def __post_init__(self) -> None:
        where = f"claim {self.id!r}"
        if not self.id or not self.subject or not self.reference:
            raise ValueError(f"{where}: id, subject and reference must be non-empty")
        if self.relation not in RELATIONS:
            raise ValueError(
                f"{where}: unknown relation {self.relation!r}; choose one of {', '.join(RELATIONS)}"
            )
        if self.pairing not in PAIRINGS:
            raise ValueError(
                f"{where}: unknown pairing {self.pairing!r}; choose one of {', '.join(PAIRINGS)}"
            )
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"{where}: margin must be a finite number >= 0, got {self.margin}")
        if self.min_param_ratio is not None and not self.min_param_ratio > 0:
            raise ValueError(f"{where}: min_param_ratio must be > 0, got {self.min_param_ratio}")
        if not 0 <= self.param_tolerance < 1:
            raise ValueError(
                f"{where}: param_tolerance must be in [0, 1), got {self.param_tolerance}"
            )

    @property
    def name(self) -> str:
        """The registry name (the :class:`~lorabench.registry.Registry` reads ``name``)."""
        return self.id

    @property
    def description(self) -> str:
        """The one-line description ``lorabench list`` would show: the claim's text."""
        return self.text


CLAIMS: Registry[Claim] = Registry("claim", entry_point_group="lorabench.claims")


def register_claim(claim: Claim, *, overwrite: bool = False) -> Claim:
    """Registers ``claim`` under its ``id`` (a plugin's claims, a test's); returns it."""
    return CLAIMS.add(claim, overwrite=overwrite)


def list_claims(pattern: str | list[str] = "*") -> list[Claim]:
    """The registered claims whose id matches the shell-style ``pattern``, built-ins first in
    the order they are declared, then the others by id."""
    names = CLAIMS.list(pattern)
    order = {claim.id: i for i, claim in enumerate(BUILT_IN_CLAIMS)}
    return [CLAIMS.get(n) for n in sorted(names, key=lambda n: (order.get(n, len(order)), n))]


# -- the built-in claims -------------------------------------------------------------------------
# Margins: one point where a paper says "matches" or "within one point"; 0 where it says "at
# least as good as" (the claims are that the variant is better, so a tie is not evidence for them).
BUILT_IN_CLAIMS = (
    Claim(
        id="lora-vs-full",
        text="LoRA (r=8) matches full fine-tuning, within ±1 point",
        citation="Hu et al. 2022, LoRA, ICLR (GLUE with RoBERTa, r=8)",
        subject="lora",
        reference="full",
        relation="equivalent",
        margin=1.0,
        pairing="each",
        subject_rank=8,
    ),
    Claim(
        id="dora-vs-lora",
        text="DoRA scores at least as well as LoRA at the same rank",
        citation="Liu et al. 2024, DoRA, ICML",
        subject="dora",
        reference="lora",
        relation="at_least",
        margin=0.0,
        pairing="equal_rank",
    ),
    Claim(
        id="vera-vs-lora",
        # The paper's claim is that VeRA loses little (at most a point), not that it cannot win:
        # one-sided, as the relation is.
        text=(
            "VeRA scores at most one point below LoRA (r=8) with at least 10x fewer trainable "
            "parameters"
        ),
        citation="Kopiczko et al. 2024, VeRA, ICLR",
        subject="vera",
        reference="lora",
        relation="at_least",
        margin=1.0,
        pairing="each",
        reference_rank=8,
        min_param_ratio=10.0,
    ),
    Claim(
        id="adalora-vs-lora",
        text="AdaLoRA scores at least as well as LoRA at an equal parameter budget",
        citation="Zhang et al. 2023, AdaLoRA, ICLR",
        subject="adalora",
        reference="lora",
        relation="at_least",
        margin=0.0,
        pairing="equal_params",
        param_tolerance=0.05,
    ),
    Claim(
        id="dylora-vs-lora",
        text="DyLoRA evaluated at rank b matches LoRA trained at rank b, within ±1 point",
        citation="Valipour et al. 2023, DyLoRA, EACL",
        subject="dylora",
        reference="lora",
        relation="equivalent",
        margin=1.0,
        pairing="eval_rank",
    ),
)
for _claim in BUILT_IN_CLAIMS:
    CLAIMS.add(_claim)
