"""Prompted evaluation by phase (Wang et al.'s protocol): a table per phase and the arms' ranking before and after.

Owns, for experiments whose arms name a `phase` (spec.Arm: e.g. 'pretrained'
for the pretrained arms, 'finetuned' for the arms that start from them and
are finetuned on a multitask mixture): one table per phase, its arms side by
side over its families plus the average over families, each the median over
templates of the accuracy with a 95% bootstrap interval over seeds × examples
(the average: `stats.mean_median_accuracy_ci`, the mean of the families'
medians, seeds resampled once for all families); and the ranking of the arms
after each phase of every (arm, arm that starts from it) pair in different
phases, on the same families (the later arms' families, i.e. the held-out
ones), with what a published study found beside it
(`Experiment.published_rankings`) and a verdict from paired differences: the
leader minus each other arm, with a bootstrap interval that draws the same
seeds and examples for both (`stats.mean_median_difference_ci`); a lead whose
interval includes 0 is "within noise". The scores are the cells'
prompted.json files (`prompted_eval.correctness`); scoring them is
`prompted_eval.run_phase`'s.
"""
from __future__ import annotations

from t5x_like.data import task_suite
from t5x_like.experiments import prompted_eval, spec, stats
from t5x_like.experiments.spec import Experiment

AVERAGE = "average"


def phase_results(experiment: Experiment, records: list[dict]) -> dict | None:
    """{'phases': {phase: {'families', 'chance': {family: c, 'average': c}, 'arms': {arm: {family or
    'average': interval dict}}}}, 'ranking': see `ranking`}; None when no arm names a phase."""
    phases = list(dict.fromkeys(arm.phase for arm in experiment.arms if arm.phase))
    if not phases:
        return None
    available, _ = task_suite.available(prompted_eval.all_families(experiment))
    out = {"phases": {}, "ranking": None}
    for phase in phases:
        arms = [arm for arm in experiment.arms if arm.phase == phase]
        families = [f for f in available if any(f in spec.zero_shot_families(experiment, arm) for arm in arms)]
        out["phases"][phase] = {"families": families, "chance": _chance(families),
                                "arms": {arm.name: _row(experiment, records, arm, families) for arm in arms}}
    out["ranking"] = ranking(experiment, records, available)
    return out


def _chance(families: list[str]) -> dict[str, float]:
    chance = {f: task_suite.family(f).chance for f in families}
    if families:
        chance[AVERAGE] = sum(chance.values()) / len(families)
    return chance


def _row(experiment: Experiment, records: list[dict], arm, families: list[str]) -> dict:
    """{family: interval dict, 'average': interval dict (only when every family is scored)}."""
    cubes = {f: prompted_eval.correctness(experiment, records, arm, f) for f in families}
    row = {f: stats.median_accuracy_ci(c).as_dict() for f, c in cubes.items() if c is not None}
    average = _average(list(cubes.values()))
    if average is not None:
        row[AVERAGE] = average
    return row


def _average(cubes: list) -> dict | None:
    """The mean over families of the medians, with its interval; None if a family is not scored (or
    the families were scored on different numbers of runs)."""
    if not cubes or any(c is None for c in cubes) or len({c.shape[0] for c in cubes}) != 1:
        return None
    return stats.mean_median_accuracy_ci(cubes).as_dict()


def ranking(experiment: Experiment, records: list[dict], available: list[str]) -> dict | None:
    """The arms ranked after the earlier and after the later phase, on the later arms' families.

    Pairs are (arm, an arm in another phase that starts from it: init_from). None without such
    pairs, or when the pairs span more than two phases or the later arms have different families.
    {'before', 'after' (phase names), 'families', 'chance', 'pairs': [{'before': arm, 'after': arm,
    'before_average', 'after_average': interval dict or None, 'before_rank', 'after_rank'}],
    'verdicts': {phase: sentence}, 'published': {phase: text}}"""
    by_name = {arm.name: arm for arm in experiment.arms}
    pairs = [(by_name[arm.init_from], arm) for arm in experiment.arms
             if arm.phase and arm.init_from and by_name[arm.init_from].phase
             and by_name[arm.init_from].phase != arm.phase]
    if not pairs or len({(a.phase, b.phase) for a, b in pairs}) != 1:
        return None
    if len({spec.zero_shot_families(experiment, b) for _, b in pairs}) != 1:
        return None
    families = [f for f in spec.zero_shot_families(experiment, pairs[0][1]) if f in available]
    if not families:
        return None
    before_phase, after_phase = pairs[0][0].phase, pairs[0][1].phase
    cubes = {arm.name: [prompted_eval.correctness(experiment, records, arm, f) for f in families]
             for pair in pairs for arm in pair}
    rows = [{"before": a.name, "after": b.name,
             "before_average": _average(cubes[a.name]), "after_average": _average(cubes[b.name])}
            for a, b in pairs]
    verdicts = {}
    for side, phase in (("before", before_phase), ("after", after_phase)):
        scores = {row[side]: row[f"{side}_average"] for row in rows}
        ranks = _ranks(scores)
        for row in rows:
            row[f"{side}_rank"] = ranks.get(row[side])
        verdicts[phase] = leader_verdict(scores, {name: cubes[name] for name in scores})
    return {"before": before_phase, "after": after_phase, "families": families,
            "chance": _chance(families)[AVERAGE], "pairs": rows, "verdicts": verdicts,
            "published": {phase: experiment.published_rankings.get(phase)
                          for phase in (before_phase, after_phase)}}


def _ranks(scores: dict[str, dict | None]) -> dict[str, int]:
    """1 + the number of arms with a higher estimate (equal estimates share a rank); arms without a
    score are not ranked."""
    estimates = {name: s["estimate"] for name, s in scores.items() if s}
    return {name: 1 + sum(other > mine for other in estimates.values()) for name, mine in estimates.items()}


def leader_verdict(scores: dict[str, dict | None], cubes: dict[str, list]) -> str:
    """One sentence on the leader (highest average): for each other arm, the leader's average minus
    its own with a paired interval (`stats.mean_median_difference_ci`), ahead where it excludes 0,
    within noise where not. cubes: each arm's [seeds, templates, examples] per family."""
    ranked = sorted((name for name, s in scores.items() if s), key=lambda name: -scores[name]["estimate"])
    if len(ranked) < 2:
        return "too few scored arms to rank"
    leader, ahead, close = ranked[0], [], []
    for name in ranked[1:]:
        try:
            difference = stats.mean_median_difference_ci(cubes[leader], cubes[name])
        except ValueError:  # scored on other seeds or examples: no paired difference
            continue
        shown = f"{name} (+{difference.estimate:.3f} [{difference.low:+.3f}, {difference.high:+.3f}])"
        (ahead if difference.low > 0 else close).append(shown)
    parts = ([f"ahead of {', '.join(ahead)}"] if ahead else []) + ([f"within noise of {', '.join(close)}"]
                                                                   if close else [])
    return f"{leader} first" + (": " + "; ".join(parts) if parts else "") + " (leader − arm, paired 95% CI)"


def _shown(interval: dict | None, chance: float) -> str:
    if not interval:
        return "—"
    text = f"{interval['estimate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"
    return f"**{text}**" if interval["low"] > chance or interval["high"] < chance else text


def phase_section(by_phase: dict) -> list[str]:
    """The report's section: a table per phase, then the ranking before and after."""
    lines = ["", "## Prompted evaluation by phase", "",
             "Median over templates of the rank-classification accuracy, 95% bootstrap interval over seeds × "
             "examples; the average over families is the mean of the families' medians (its bootstrap resamples "
             "the runs once for all families and each family's examples); **bold** where the interval "
             "excludes chance."]
    for phase, table in by_phase["phases"].items():
        columns = [*table["families"], AVERAGE] if table["families"] else []
        lines += ["", f"### Phase: {phase}", "",
                  "| arm | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns),
                  "| chance | " + " | ".join(f"{table['chance'][c]:.3f}" for c in columns) + " |"]
        for arm, row in table["arms"].items():
            lines.append(f"| {arm} | " + " | ".join(_cell(row, c, table["chance"][c]) for c in columns) + " |")
    lines += _ranking_lines(by_phase.get("ranking"))
    return lines


def _cell(row: dict, column: str, chance: float) -> str:
    if column in row or column == AVERAGE:  # no average: some family not scored
        return _shown(row.get(column), chance)
    return "(not scored)"


def _ranking_lines(rank: dict | None) -> list[str]:
    if not rank:
        return []
    before, after = rank["before"], rank["after"]
    lines = ["", f"### Ranking after {before} vs after {after}", "",
             f"On the same families for both: {', '.join(rank['families'])} (average of the medians; chance "
             f"{rank['chance']:.3f}).", "",
             f"| arm ({before}) | average [95% CI] | rank | arm ({after}) | average [95% CI] | rank |",
             "|---|---|---|---|---|---|"]
    for row in rank["pairs"]:
        lines.append(f"| {row['before']} | {_shown(row['before_average'], rank['chance'])} | "
                     f"{row['before_rank'] or '—'} | {row['after']} | {_shown(row['after_average'], rank['chance'])} | "
                     f"{row['after_rank'] or '—'} |")
    lines.append("")
    for phase in (before, after):
        published = rank["published"].get(phase)
        lines.append(f"- after {phase}: {rank['verdicts'][phase]}"
                     + (f"; published: {published}" if published else ""))
    return lines
