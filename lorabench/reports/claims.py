"""The papers' claims, checked on the runs present.

Every registered :class:`~lorabench.variants.claims.Claim` (the built-in table in
:mod:`lorabench.variants.claims`, and any a plugin adds) is checked the same way, by its relation
kind and pairing rule alone; this module never looks at a variant's name.

1. **Pairs.** The subject's rows are paired with the reference's rows on the same task, data,
   model and budget (:data:`~lorabench.reports.stats.SAME_SETUP`) by the claim's pairing rule:
   equal nominal rank; equal parameter budget within the claim's tolerance (an adaptive-rank row
   counts at its final rank: its adapter parameters times final mean rank over initial rank);
   one training evaluated at every rank b (``rank_scores``) against the reference trained at
   rank b; or every subject row with every reference row.
2. **Per task, over seeds.** Each pair's scores are compared over the seeds both ran with the
   paired t-test of :func:`lorabench.reports.stats.paired_test` (scipy's ``ttest_rel``), in
   points (x100 of the metric, so that one point is 1 on accuracy and 0.01 on Matthews
   correlation; signed so that positive means the subject is better), with its 95% interval.
3. **The relation, read from the interval.** ``at_least`` (non-inferiority at margin m): holds
   when the lower bound is >= -m, does not hold when the upper bound is < -m. ``equivalent``
   (within ±m): holds when the interval lies inside [-m, m], does not hold when it lies wholly
   outside. Otherwise undecided: the interval is too wide for the seeds there are (or there are
   fewer than :data:`~lorabench.reports.stats.MIN_SEEDS` shared seeds: no test). A pair that
   misses the claim's parameter-ratio condition does not hold, whatever its scores.
4. **Across tasks and pairs.** Differences are not averaged across tasks (their metrics are not
   commensurable; Demšar 2006): a claim holds when it holds for every pair on every task, does
   not hold when it fails for one, and is undecided otherwise. With no pair at all the verdict
   names the runs that are missing and the command that adds them.
"""

from __future__ import annotations

import math
import shlex
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.reports.frame import (
    ReportData,
    metric_value,
    ordered_tasks,
    variant_class,
    variant_name,
)
from lorabench.reports.stats import (
    ALPHA,
    MIN_SEEDS,
    SAME_SETUP,
    Section,
    paired_test,
)
from lorabench.variants.claims import Claim, list_claims

POINTS = 100.0  # one score point: 0.01 of a metric (1 on accuracy printed x100)
HOLDS, FAILS, UNDECIDED, MISSING = "holds", "does not hold", "undecided", "missing runs"

TEST_COLUMNS = [
    "claim",
    "task",
    "metric",
    "subject",
    "reference",
    "n",
    "seeds",
    "mean_difference",
    "ci_low",
    "ci_high",
    "p_value",
    "param_ratio",
    "status",
    "verdict",
]

CAPTION = (
    "Each claim pairs its subject's rows with its reference's rows on the same task, data, model "
    "and budget (by equal rank; by equal parameter budget, an adaptive-rank row counted at its "
    "final rank, i.e. its adapter parameters times final mean rank over initial rank; by the "
    "rank b one training was evaluated at against the reference trained at rank b, whose final "
    "evaluation is then used on both sides; or every row with every row), then compares them "
    "over the seeds both ran: difference = subject minus reference in points (x100 of the "
    "metric: 1 on accuracy, 0.01 on Matthews correlation or Pearson; signed so that positive "
    "means the subject is better), 95% CI and p from the paired t-test (scipy.stats.ttest_rel). "
    "Decision, from the interval: “at least” with margin m holds when the CI's lower bound is "
    "≥ −m and does not hold when its upper bound is < −m; “equivalent within ±m” holds when the "
    f"CI lies inside [−m, m] and does not hold when it lies wholly outside; otherwise undecided "
    f"(CI too wide for the seeds there are; with fewer than {MIN_SEEDS} shared seeds there is "
    "no test). A pair that misses a parameter-ratio condition (adapter parameters, the head "
    "left out) does not hold whatever its scores. Tasks are not averaged (their metrics are not "
    "commensurable): a claim holds when every pair holds on every task, does not hold when one "
    "fails, and is otherwise undecided. No correction for the number of comparisons."
)


@dataclass
class ClaimCheck:
    """One claim checked on the runs present.

    Attributes:
        claim: the claim.
        status: :data:`HOLDS`, :data:`FAILS`, :data:`UNDECIDED` or :data:`MISSING`.
        verdict: the sentence the report prints: "holds", "does not hold: ...", "undecided
            (CI too wide: 3 seeds)", "missing runs: ...".
        tests: one row per pair and task (columns :data:`TEST_COLUMNS`): the test behind it.
        not_compared: subject rows left without a partner, and why (when other pairs decide).
    """

    claim: Claim
    status: str
    verdict: str
    tests: pd.DataFrame
    not_compared: list[str] = field(default_factory=list)

    @property
    def runs_used(self) -> list[str]:
        """``"DoRA r=8 vs LoRA r=8 on rte"``: each pair once, with the tasks it was tested on."""
        tasks: dict[tuple[str, str], list[str]] = {}
        for row in self.tests.itertuples(index=False):
            tasks.setdefault((row.subject, row.reference), []).append(row.task)
        return [f"{s} vs {r} on {', '.join(t)}" for (s, r), t in tasks.items()]


# -- rows and their scores -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Side:
    """One side of a pair on one task: a report row (at one eval rank, for ``eval_rank``)."""

    label: str
    row: str  # the report row's label (the same as ``label`` but for an eval_rank side)
    rank: float  # the nominal rank (the evaluated rank for an eval_rank side); NaN: none
    params: float  # the parameter budget (see _params); NaN: not recorded
    setup: tuple[object, ...]
    higher_is_better: bool
    scores: pd.Series  # seed -> raw score


def _params(frame: pd.DataFrame) -> float:
    """A row's parameter budget: its adapter parameters, and for an adaptive-rank row (its ranks
    change in training) those times its final mean rank over its initial rank, what it ends with
    when every adapted matrix has one shape (the parameters of one rank are alike)."""
    params = frame["adapter_params"].astype(float)
    scale = np.where(
        frame["adaptive_rank"].astype(bool),
        frame["axis_rank"].astype(float) / frame["rank"].astype(float),
        1.0,
    )
    value = float(np.nanmean(params * scale)) if (params * scale).notna().any() else math.nan
    return value if value > 0 else math.nan


def _sides(data: ReportData, variant: str, *, by_eval_rank: bool = False) -> list[_Side]:
    """The variant's rows per task, each with its per-seed scores (raw, as the report scores
    them); with ``by_eval_rank``, one side per rank the row's training was evaluated at (the
    final evaluation at that rank; a run without ``rank_scores`` at its nominal rank)."""
    runs = data.runs
    mine = runs[runs["variant"] == variant]
    if mine.empty:
        return []
    records = {r.run_id: r for r in data.records}
    out = []
    for (config, _), group in mine.groupby(["config", "task"], sort=False):
        first = group.iloc[0]
        setup = tuple(first[k] for k in SAME_SETUP)
        params, higher = _params(group), bool(first["higher_is_better"])
        rank = math.nan if pd.isna(first["rank"]) else float(first["rank"])
        if not by_eval_rank:
            scores = group.groupby("seed")["score"].mean()
            out.append(_Side(str(config), str(config), rank, params, setup, higher, scores))
            continue
        at_rank: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for run_id, seed in zip(group["run_id"], group["seed"], strict=True):
            record = records[run_id]
            evaluated = record.rank_scores or (
                {record.rank: {record.primary_metric: record.score}} if record.rank else {}
            )
            for b, metrics in evaluated.items():
                value = metric_value(metrics, record.primary_metric)
                if value is not None and math.isfinite(value):
                    at_rank[int(b)][int(seed)].append(value)
        for b in sorted(at_rank):
            scores = pd.Series({s: float(np.mean(v)) for s, v in at_rank[b].items()}).sort_index()
            label = f"{config} at r={b}"
            out.append(_Side(label, str(config), float(b), params, setup, higher, scores))
    return out


def _final(data: ReportData) -> ReportData:
    """The report's runs scored by each run's final evaluation: per-rank scores are final
    evaluations, so their partners are too, also when the report ranks by the best one."""
    final = {r.run_id: float(r.score) for r in data.records if r.score is not None}
    runs = data.runs.assign(score=data.runs["run_id"].map(final))
    return ReportData(runs, data.records, [], [], score="final")


def _task(side: _Side) -> str:
    return str(side.setup[SAME_SETUP.index("task")])


# -- pairing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Wanted:
    """The partner a subject side lacks: in words ("r=8"; "" for any row) and, when known, the
    reference rank that would be it (for the suggested command)."""

    text: str
    rank: int | None = None


def _pairs(
    claim: Claim, subjects: list[_Side], references: list[_Side]
) -> tuple[list[tuple[_Side, _Side]], dict[int, _Wanted]]:
    """(subject, reference) pairs by the claim's rule, and for each subject side without a
    partner (by index) what its partner would be."""
    pairs: list[tuple[_Side, _Side]] = []
    wanted: dict[int, _Wanted] = {}
    for i, s in enumerate(subjects):
        same = [r for r in references if r.setup == s.setup]
        if claim.pairing in ("equal_rank", "eval_rank"):
            found = [r for r in same if math.isfinite(s.rank) and r.rank == s.rank]
            need = (
                _Wanted(f"r={s.rank:g}", int(s.rank))
                if math.isfinite(s.rank)
                else _Wanted("the same rank")
            )
        elif claim.pairing == "equal_params":
            found, need = _equal_params(claim, s, same, references)
        else:  # each
            found, need = same, _Wanted("", claim.reference_rank)
        pairs += [(s, r) for r in found]
        if not found:
            wanted[i] = need
    return pairs, wanted


def _equal_params(
    claim: Claim, subject: _Side, same: list[_Side], references: list[_Side]
) -> tuple[list[_Side], _Wanted]:
    """The reference row whose parameter budget is nearest the subject's within the tolerance
    (ties to the lower rank), and the partner wanted when there is none."""
    tolerance = claim.param_tolerance
    if not math.isfinite(subject.params):
        return [], _Wanted("a recorded parameter count (the subject's runs recorded none)")

    def gap(r: _Side) -> float:
        return abs(r.params - subject.params) / subject.params

    near = [r for r in same if math.isfinite(r.params) and gap(r) <= tolerance]
    near.sort(key=lambda r: (gap(r), r.rank))
    text = f"{subject.params:,.0f} adapter parameters (±{tolerance:.0%})"
    # The reference's parameters per unit of rank (its count is linear in the rank): which rank
    # would match, for the suggested command.
    per_rank = [r.params / r.rank for r in references if math.isfinite(r.params / r.rank)]
    if not per_rank:
        return near[:1], _Wanted(text)
    rank = max(1, round(subject.params / float(np.median(per_rank))))
    return near[:1], _Wanted(f"{text}, i.e. r={rank}", rank)


# -- deciding ------------------------------------------------------------------------------------
def _decide(claim: Claim, test: dict[str, object]) -> tuple[str, str]:
    """(status, verdict) of one pair on one task from its paired test."""
    low, high, n = float(test["ci_low"]), float(test["ci_high"]), int(test["n"])
    if not (math.isfinite(low) and math.isfinite(high)):
        return UNDECIDED, f"{UNDECIDED} ({test['verdict']})"
    m = claim.margin
    if claim.relation == "at_least":
        holds, fails = low >= -m, high < -m
    else:  # equivalent
        holds, fails = -m <= low and high <= m, low > m or high < -m
    if holds:
        return HOLDS, HOLDS
    if fails:
        return FAILS, FAILS
    return UNDECIDED, f"{UNDECIDED} (CI too wide: {n} seeds)"


def _ratio_problem(claim: Claim, subject: _Side, reference: _Side) -> tuple[float, str]:
    """(reference params / subject params, why the ratio condition fails or "")."""
    ratio = reference.params / subject.params
    if claim.min_param_ratio is None:
        return ratio, ""
    if not math.isfinite(ratio):
        return ratio, "parameter counts not recorded, so the ratio condition cannot be checked"
    if ratio < claim.min_param_ratio:
        return ratio, (
            f"{reference.label} trains {ratio:.1f}x the adapter parameters of {subject.label}; "
            f"the claim needs at least {claim.min_param_ratio:g}x"
        )
    return ratio, ""


def check_claim(data: ReportData, claim: Claim, *, alpha: float = ALPHA) -> ClaimCheck:
    """Checks one claim on the report's runs (see the module docstring for the rules)."""
    if claim.pairing == "eval_rank":
        final = _final(data)
        subjects = _sides(final, claim.subject, by_eval_rank=True)
        references = _sides(final, claim.reference)
    else:
        subjects, references = _sides(data, claim.subject), _sides(data, claim.reference)
    subjects = [s for s in subjects if _rank_matches(s, claim.subject_rank)]
    references = [r for r in references if _rank_matches(r, claim.reference_rank)]
    pairs, wanted = _pairs(claim, subjects, references)
    rows = []
    for s, r in pairs:
        seeds = sorted(set(s.scores.index) & set(r.scores.index))
        sign = POINTS if s.higher_is_better else -POINTS
        test = paired_test(
            sign * s.scores.loc[seeds].to_numpy(float),
            sign * r.scores.loc[seeds].to_numpy(float),
            [int(x) for x in seeds],
            alpha=alpha,
        )
        status, verdict = _decide(claim, test)
        ratio, problem = _ratio_problem(claim, s, r)
        if problem and math.isfinite(ratio):
            status, verdict = FAILS, f"{FAILS}: {problem}"
        elif problem and status != FAILS:  # unknown counts cannot rescue a failing score
            status, verdict = UNDECIDED, f"{UNDECIDED} ({problem})"
        rows.append(
            {
                "claim": claim.id,
                "task": _task(s),
                "metric": str(s.setup[SAME_SETUP.index("metric")]),
                "subject": s.label,
                "reference": r.label,
                **{k: test[k] for k in ("n", "seeds", "mean_difference", "ci_low", "ci_high")},
                "p_value": test["p_value"],
                "param_ratio": ratio,
                "status": status,
                "verdict": verdict,
            }
        )
    tests = pd.DataFrame(rows, columns=TEST_COLUMNS)
    if tests.empty:
        verdict = _missing(data, claim, subjects, references, wanted)
        return ClaimCheck(claim, MISSING, verdict, tests)
    # One line per subject row and task (a row evaluated at eight ranks is one line).
    lacking: dict[tuple[str, str], list[str]] = {}
    for i, need in wanted.items():
        lacking.setdefault((subjects[i].row, _task(subjects[i])), []).append(need.text)
    not_compared = [
        f"{row} on {task}: no {_reference_name(claim)}"
        + (f" with {', '.join(dict.fromkeys(t for t in texts if t))}" if any(texts) else "")
        + " on the same data, model and budget"
        for (row, task), texts in lacking.items()
    ]
    status, verdict = _overall(tests)
    return ClaimCheck(claim, status, verdict, tests, not_compared)


def _rank_matches(side: _Side, rank: int | None) -> bool:
    return rank is None or side.rank == rank


def _overall(tests: pd.DataFrame) -> tuple[str, str]:
    """The claim's status over every pair and task: fails where one fails, holds where all
    hold, else undecided with the distinct reasons."""
    failing = tests[tests["status"] == FAILS]
    if not failing.empty:
        where = "; ".join(
            f"{row.subject} vs {row.reference} on {row.task}"
            for row in failing.itertuples(index=False)
        )
        return FAILS, f"{FAILS} ({where})"
    if (tests["status"] == HOLDS).all():
        return HOLDS, f"{HOLDS} ({len(tests)} of {len(tests)} tests)"
    undecided = tests.loc[tests["status"] == UNDECIDED, "verdict"]
    reasons = list(dict.fromkeys(v.removeprefix(UNDECIDED).strip() for v in undecided))
    holding = int((tests["status"] == HOLDS).sum())
    text = f"{UNDECIDED} {'; '.join(reasons)}".strip()
    if holding:
        text += f"; {holding} of {len(tests)} tests hold"
    return UNDECIDED, text


# -- what is missing -----------------------------------------------------------------------------
def _reference_name(claim: Claim) -> str:
    return variant_name(claim.reference)


def _with_rank(name: str, rank: int | None) -> str:
    return f"{name} r={rank}" if rank is not None else name


def _missing(
    data: ReportData,
    claim: Claim,
    subjects: list[_Side],
    references: list[_Side],
    wanted: dict[int, _Wanted],
) -> str:
    """ "missing runs: ..." naming the runs to add and a command that adds them."""
    runs = data.runs
    all_tasks = ordered_tasks(runs["task"]) if not runs.empty else []
    subject = _with_rank(variant_name(claim.subject), claim.subject_rank)
    reference = _with_rank(_reference_name(claim), claim.reference_rank)
    if not subjects and not references:
        what = f"{subject} and {reference}"
        tasks, variants = all_tasks, [claim.subject, claim.reference]
        sides = ((claim.subject, claim.subject_rank), (claim.reference, claim.reference_rank))
        ranks = {v: r for v, r in sides if r is not None}
    elif not subjects:
        what = subject
        tasks, variants = ordered_tasks(_task(r) for r in references), [claim.subject]
        ranks = {claim.subject: claim.subject_rank} if claim.subject_rank is not None else {}
    elif not references:
        what = reference
        tasks, variants = ordered_tasks(_task(s) for s in subjects), [claim.reference]
        ranks = {claim.reference: claim.reference_rank} if claim.reference_rank is not None else {}
    else:
        needs = list(dict.fromkeys(wanted.values()))
        texts = [n.text for n in needs if n.text]
        what = reference + (f" with {' or '.join(texts)}" if texts else "")
        what += " on the same data, model and budget as " + ", ".join(
            dict.fromkeys(subjects[i].label for i in wanted)
        )
        tasks, variants = ordered_tasks(_task(subjects[i]) for i in wanted), [claim.reference]
        # One rank per command: the first one wanted (the others are named in the text).
        first = next((n.rank for n in needs if n.rank is not None), None)
        ranks = {claim.reference: first} if first is not None else {}
    notes = []
    for name in dict.fromkeys(variants):
        if variant_class(name) is None:
            notes.append(f"{name} is not a registered variant in this install yet")
    seeds = sorted({int(s) for s in runs["seed"]}) if not runs.empty else []
    command = _run_command(variants, tasks, _enough_seeds(seeds), ranks)
    # The model and budget of the runs present, when they agree (else the user picks).
    for flag, column in (("--model", "model"), ("--budget", "budget")):
        values = {str(v) for v in runs[column] if str(v)} if not runs.empty else set()
        if len(values) == 1:
            command += f" {flag} {shlex.quote(values.pop())}"
    on = f" on {', '.join(tasks)}" if tasks else ""
    text = f"{MISSING}: {what}{on}; run `{command}` with the training recipe of the runs present"
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _enough_seeds(seeds: list[int]) -> list[int]:
    """The seeds present, topped up with the smallest unused ones to :data:`MIN_SEEDS`."""
    out, candidate = sorted(seeds), 0
    while len(out) < MIN_SEEDS:
        if candidate not in out:
            out.append(candidate)
        candidate += 1
    return sorted(out)


def _run_command(
    variants: list[str], tasks: list[str], seeds: list[int], ranks: dict[str, int]
) -> str:
    """``lorabench run --variants ... --tasks ... --seeds ...`` (``--variant-config`` for a
    rank); the model, budget and recipe should be those of the runs present."""
    parts = ["lorabench run", f"--variants {','.join(variants)}"]
    parts.append(f"--tasks {','.join(tasks) if tasks else 'TASK'}")
    count = seeds == list(range(len(seeds)))
    parts.append(f"--seeds {len(seeds) if count else ','.join(map(str, seeds))}")
    parts += [f"--variant-config {v}.r={r}" for v, r in ranks.items()]
    return " ".join(parts)


# -- all claims ----------------------------------------------------------------------------------
def check_claims(
    data: ReportData, claims: Iterable[Claim] | None = None, *, alpha: float = ALPHA
) -> list[ClaimCheck]:
    """Checks ``claims`` (default: every registered claim, built-ins first) on the report's
    runs; one :class:`ClaimCheck` each, in order."""
    chosen = list_claims() if claims is None else list(claims)
    return [check_claim(data, claim, alpha=alpha) for claim in chosen]


def _relation_text(claim: Claim) -> str:
    if claim.relation == "equivalent":
        text = f"within ±{claim.margin:g} pt"
    else:  # at_least
        text = f"≥ reference − {claim.margin:g} pt" if claim.margin else "≥ reference"
    pairing = {
        "equal_rank": "at equal rank",
        "equal_params": f"at equal parameter budget (±{claim.param_tolerance:.0%})",
        "eval_rank": "at each evaluated rank vs trained at that rank",
        "each": "every pair of rows",
    }[claim.pairing]
    text += f", {pairing}"
    if claim.min_param_ratio is not None:
        text += f", ≥ {claim.min_param_ratio:g}x fewer adapter parameters"
    return text


def sections(checks: list[ClaimCheck]) -> list[Section]:
    """The claims as titled sections: one line per claim (its verdict and the runs used), then
    the tests behind the verdicts, one line per pair and task."""
    if not checks:
        return [Section("The papers' claims", CAPTION + "\n\nNo claim is registered.")]
    summary = [
        [
            check.claim.text,
            check.claim.citation,
            _relation_text(check.claim),
            check.verdict,
            "; ".join(check.runs_used + [f"not compared: {n}" for n in check.not_compared]) or "–",
        ]
        for check in checks
    ]
    out = [
        Section(
            "The papers' claims",
            CAPTION,
            ["claim", "paper", "test", "verdict", "runs used"],
            summary,
        )
    ]
    detail = []
    for check in checks:
        for row in check.tests.itertuples(index=False):
            defined = math.isfinite(row.ci_low)
            detail.append(
                [
                    row.claim,
                    f"{row.task} ({row.metric})",
                    row.subject,
                    row.reference,
                    str(row.n),
                    f"{row.mean_difference:+.2f}" if math.isfinite(row.mean_difference) else "–",
                    f"[{row.ci_low:+.2f}, {row.ci_high:+.2f}]" if defined else "–",
                    _p(row.p_value),
                    f"{row.param_ratio:.1f}x" if math.isfinite(row.param_ratio) else "–",
                    row.verdict,
                ]
            )
    if detail:
        out.append(
            Section(
                "The tests behind the claims",
                "One line per pair and task: the paired t-test over the seeds both ran; the "
                "difference and its 95% CI in points (subject minus reference, positive = "
                "subject better); params: reference over subject adapter parameters.",
                [
                    "claim",
                    "task",
                    "subject",
                    "reference",
                    "seeds",
                    "difference (pt)",
                    "95% CI",
                    "p",
                    "params",
                    "verdict",
                ],
                detail,
            )
        )
    return out


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def to_markdown(checks: list[ClaimCheck]) -> str:
    """The claims section in Markdown: verdicts with their decision rules, then the tests."""
    return "\n".join(s.to_markdown() for s in sections(checks))


def write_claims(
    checks: list[ClaimCheck], out_dir: Path, *, append_to: Path | None = None
) -> dict[str, Path]:
    """Writes ``claims.csv`` (one line per claim, pair and task; a claim without a pair as one
    line with its verdict) into ``out_dir`` and appends the Markdown section to ``append_to``
    (the report's ``stats.md``, which ``lorabench report`` prints) when given; returns
    ``{"csv": path}``, nothing when there is no claim."""
    if not checks:
        return {}
    if append_to is not None:
        with append_to.open("a", encoding="utf-8") as stream:
            stream.write("\n" + to_markdown(checks))
    lines = []
    for check in checks:
        tests = check.tests if not check.tests.empty else pd.DataFrame([{"claim": check.claim.id}])
        lines.append(tests.assign(claim_status=check.status, claim_verdict=check.verdict))
    table = pd.concat(lines, ignore_index=True)
    path = out_dir / "claims.csv"
    table.reindex(columns=[*TEST_COLUMNS, "claim_status", "claim_verdict"]).to_csv(
        path, index=False
    )
    return {"csv": path}


__all__ = [
    "CAPTION",
    "FAILS",
    "HOLDS",
    "MISSING",
    "TEST_COLUMNS",
    "UNDECIDED",
    "ClaimCheck",
    "check_claim",
    "check_claims",
    "sections",
    "to_markdown",
    "write_claims",
]
