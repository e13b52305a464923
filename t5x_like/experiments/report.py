"""Reports of a comparison: report.md, results.json, results.csv, plots, metrics/.

Input: the per-run records that `grid.py` writes (MODEL_DIR/result.json) and each run's
metrics.jsonl. Every number in report.md is taken from the same `results` dict that is
written to results.json, so the two never disagree. Statistics are `stats.py`'s.
"""
from __future__ import annotations

import collections
import csv
import json
import os
import shutil

import numpy as np
import scipy.stats

from t5x_like.experiments import prompted_eval, stats, zero_shot_phases
from t5x_like.experiments.cells import plan, run_dir_of
from t5x_like.training import machine
from t5x_like.training.metrics_log import read_jsonl

CONVERGED_DROP = 0.02  # < 2% loss drop over the last quarter of training = "near convergence"


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    return read_jsonl(path) if os.path.exists(path) else []


def eval_curve(rows: list[dict]) -> tuple[list[int], list[float]]:
    points = {r["step"]: r["loss"] for r in rows if r.get("split") == "eval" and "loss" in r}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def run_eval_curve(experiment, arm_name: str, seed: int) -> tuple[list[int], list[float]]:
    """The eval-loss curve of one run of the grid (its metrics.jsonl)."""
    return eval_curve(read_metrics(run_dir_of(experiment.output_dir, arm_name, seed)))


def convergence_note(steps: list[int], losses: list[float]) -> tuple[float | None, str]:
    """Relative loss drop over the last quarter of training, and a plain sentence."""
    if len(steps) < 2:
        return None, "too few evaluations to judge convergence"
    last = steps[-1]
    earlier = [loss for step, loss in zip(steps, losses) if step <= 0.75 * last] or losses[:1]
    drop = (earlier[-1] - losses[-1]) / earlier[-1]
    if drop > CONVERGED_DROP:
        return drop, f"still improving ({drop:.1%} lower over the last quarter): far from converged"
    return drop, f"near a plateau ({drop:.1%} change over the last quarter)"


def build_results(experiment, size_rows: dict, records: list[dict]) -> dict:
    by_arm = collections.defaultdict(list)
    for record in records:
        by_arm[record["arm"]].append(record)
    arms = []
    for arm in experiment.arms:
        runs = sorted(by_arm.get(arm.name, []), key=lambda r: r["seed"])
        row = {"arm": arm.name, "claims": arm.claims, **size_rows[arm.name], "seeds": [r["seed"] for r in runs],
               "eval_task": arm.eval_task or experiment.eval_task, "task": arm.task or experiment.task}
        if runs:
            own = [r["final_eval_metrics"].get("loss") for r in runs if r.get("final_eval_metrics")]
            row["own_objective_eval_loss"] = float(np.mean(own)) if own else None
            row["own_objective_eval_loss_per_seed"] = own
            row["steps"] = runs[0]["steps"]
            row["examples_seen"] = runs[0]["examples_seen"]
            row["tokens_seen"] = runs[0]["examples_seen"] * (row["inputs_length"] + row["targets_length"])
            row["train_flops_total"] = runs[0]["examples_seen"] * row["train_flops_per_example"]
            shared = [r["shared_nll_per_example"] for r in runs if r.get("shared_nll_per_example")]
            if shared:
                n = min(len(s) for s in shared)
                row["shared_nll"] = stats.layout_mean_ci([s[:n] for s in shared]).as_dict()
                row["shared_eval_examples"] = n
            curves = [run_eval_curve(experiment, arm.name, r["seed"]) for r in runs]
            drops = [convergence_note(*c) for c in curves]
            row["convergence"] = drops[0][1] if drops else "no runs"
            row["downstream"] = _downstream_means(runs)
            row["last_quarter_drop"] = [d[0] for d in drops]
        arms.append(row)
    return {"experiment": experiment.name, "description": experiment.description, "task": experiment.task,
            "eval_task": experiment.eval_task, "seeds": list(experiment.seeds),
            "train_steps": experiment.train_steps, "batch_size": experiment.batch_size,
            "reference_arm": experiment.reference_arm or experiment.arms[0].name,
            "arms": arms, "differences": _differences(experiment, records),
            "missing_runs": missing_runs(experiment, records),
            "adaptation": _adaptation(experiment, records),
            "ranking": _ranking(experiment, records),
            "scaling": _scaling(experiment, arms, records) if experiment.scaling_fit else None,
            "protocols": protocol_agreement(arms),
            "machine": machine.this_machine(), "trained_on": trained_on(records),
            "prompted": prompted_eval.results(experiment, records) if prompted_eval.wanted(experiment) else None,
            "zero_shot_phases": zero_shot_phases.phase_results(experiment, records)}



def trained_on(records: list[dict]) -> list[str]:
    """The machines the runs trained on (machine.summary of each record's, in order of first use;
    records written before machines were recorded are left out)."""
    machines = [machine.machine_line(r["machine"]) for r in records if r.get("machine")]
    return list(dict.fromkeys(machines))


def missing_runs(experiment, records: list[dict]) -> list[str]:
    """'arm seed k' for every planned run without a record (not finished, or never started)."""
    done = {(r["arm"], r["seed"]) for r in records}
    return [cell.label for cell in plan(experiment) if (cell.arm.name, cell.seed) not in done]


def _downstream_means(runs: list[dict]) -> dict[str, dict[str, float]]:
    """{task: {metric: mean over seeds}} of the runs' downstream evaluations."""
    values = collections.defaultdict(lambda: collections.defaultdict(list))
    for run in runs:
        for task, metrics in (run.get("downstream") or {}).items():
            for name, value in metrics.items():
                if isinstance(value, (int, float)):
                    values[task][name].append(float(value))
    return {task: {name: float(np.mean(v)) for name, v in metrics.items()} for task, metrics in values.items()}


LOWER_IS_BETTER = ("loss",)
NOT_RANKED = ("examples", "target_tokens", "perplexity")  # counts, and loss's order again


def protocol_agreement(arms: list[dict]) -> list[dict]:
    """Do pretraining loss and a downstream metric rank the arms alike (T5 ranked by finetuning,
    Su by pretraining loss)? Pretraining loss is each arm's own eval loss among arms trained on
    the same task, and the shared metric among arms with the same eval task; each set of >= 3
    arms scored downstream (finetuned, or zero-shot) gets Kendall's tau per downstream metric
    (1: the same order; -1: reversed), on means over seeds, with the p-value of tau = 0 over the
    orders of those arms; None where either side is the same for every arm or not finite."""
    def tagged(key: str, loss) -> dict:
        sets = collections.defaultdict(list)
        for arm in arms:
            if arm.get("downstream") and loss(arm) is not None:
                sets[arm[key]].append(arm)
        return sets

    candidates = [(f"own eval loss ({task})", members, lambda a: a.get("own_objective_eval_loss"))
                  for task, members in tagged("task", lambda a: a.get("own_objective_eval_loss")).items()]
    shared = lambda a: (a.get("shared_nll") or {}).get("estimate")
    candidates += [(f"shared metric ({task})", members, shared) for task, members in tagged("eval_task", shared).items()]
    rows = []
    for label, members, loss in candidates:
        if len(members) < 3:
            continue
        metrics = sorted({(task, name) for a in members for task, values in a["downstream"].items()
                          for name in values if name not in NOT_RANKED})
        for task, name in metrics:
            values = [a["downstream"].get(task, {}).get(name) for a in members]
            if None in values:
                continue
            goodness = [-v if name in LOWER_IS_BETTER else v for v in values]
            pretraining = [-loss(a) for a in members]
            rankable = all(np.isfinite(goodness + pretraining)) and len(set(goodness)) > 1 and len(set(pretraining)) > 1
            tau, p_value = map(float, scipy.stats.kendalltau(pretraining, goodness)) if rankable else (None, None)
            rows.append({"pretraining": label, "arms": [a["arm"] for a in members], "task": task, "metric": name,
                         "kendall_tau": tau, "p_value": p_value})
    return rows


def _shared_matrix(records: list[dict], arm: str) -> np.ndarray | None:
    rows = [r["shared_nll_per_example"] for r in records if r["arm"] == arm and r.get("shared_nll_per_example")]
    if not rows:
        return None
    n = min(len(r) for r in rows)
    return np.asarray([r[:n] for r in rows])


def reference_arms(experiment) -> dict[str, str]:
    """Reference arm per eval task: the experiment's reference_arm where it shares
    the eval task, otherwise the first arm with that eval task."""
    eval_task = lambda arm: arm.eval_task or experiment.eval_task
    references = {}
    for arm in experiment.arms:
        references.setdefault(eval_task(arm), arm.name)
    if experiment.reference_arm:
        chosen = next(a for a in experiment.arms if a.name == experiment.reference_arm)
        references[eval_task(chosen)] = chosen.name
    return references


def _differences(experiment, records: list[dict]) -> list[dict]:
    """Each arm against the reference of its eval task, then the experiment's `comparisons`."""
    references = reference_arms(experiment)
    pairs = [(arm.name, references[arm.eval_task or experiment.eval_task]) for arm in experiment.arms]
    out = []
    for arm, reference in [pair for pair in pairs if pair[0] != pair[1]] + list(experiment.comparisons):
        ref, other = _shared_matrix(records, reference), _shared_matrix(records, arm)
        if ref is None or other is None:
            continue
        n = min(ref.shape[1], other.shape[1])
        interval = stats.paired_difference_ci(other[:, :n], ref[:, :n])
        out.append({"arm": arm, "reference": reference, **interval.as_dict(),
                    "within_noise": interval.contains(0.0),
                    "sentence": stats.describe_difference(arm, reference, interval)})
    return out


def _eval_curves(experiment, arm_name: str, records: list[dict]) -> tuple[list[int], np.ndarray] | None:
    """The eval-loss curves of an arm's runs [seeds, evaluations], cut to the evaluations all share."""
    curves = [run_eval_curve(experiment, arm_name, r["seed"]) for r in records if r["arm"] == arm_name]
    curves = [c for c in curves if c[0]]
    if not curves:
        return None
    n = min(len(steps) for steps, _ in curves)
    return curves[0][0][:n], np.asarray([losses[:n] for _, losses in curves])


def _adaptation(experiment, records: list[dict]) -> list[dict]:
    """For each arm started from another arm's checkpoint and given a from-scratch baseline: the
    steps of the baseline its final eval loss is worth, next to the steps it cost in all."""
    by_name = {arm.name: arm for arm in experiment.arms}
    rows = []
    for arm in experiment.arms:
        if not (arm.init_from and arm.baseline):
            continue
        adapted, baseline = _eval_curves(experiment, arm.name, records), _eval_curves(experiment, arm.baseline, records)
        if adapted is None or baseline is None:
            continue
        source_steps = by_name[arm.init_from].train_steps or experiment.train_steps
        own_steps = arm.train_steps or experiment.train_steps
        finals = adapted[1][:, -1]
        worth = stats.equivalent_steps_ci(baseline[0], baseline[1], finals)
        total = source_steps + own_steps
        at_total = [loss for step, loss in zip(baseline[0], baseline[1].mean(0)) if step <= total]
        rows.append({"arm": arm.name, "init_from": arm.init_from, "baseline": arm.baseline,
                     "source_steps": source_steps, "adapted_steps": own_steps, "total_steps": total,
                     "baseline_steps": int(baseline[0][-1]), "adapted_final_loss": float(finals.mean()),
                     "baseline_loss_at_total": at_total[-1] if at_total else None,
                     "worth_baseline_steps": worth.as_dict(),
                     "saved_steps": {k: v - total for k, v in worth.as_dict().items()}})
    return rows


def _ranking(experiment, records: list[dict]) -> list[dict]:
    """Per group of arms trained from scratch on the same task for the same steps (so their eval
    losses measure the same thing at the same points): from which evaluation on the order of the
    arms' mean eval loss stays the final one, and for every pair its difference at each evaluation
    with an interval over seeds, its crossings and the step from which the final lead is resolved
    (interval excluding 0 from there on). Adapted arms (init_from) start elsewhere and are left out."""
    by_task = collections.defaultdict(list)
    for arm in experiment.arms:
        curves = None if arm.init_from else _eval_curves(experiment, arm.name, records)
        if curves is not None:
            by_task[(arm.task or experiment.task, arm.train_steps or experiment.train_steps)].append(
                (arm.name, *curves))
    groups = []
    for (task, _), arms in by_task.items():
        if len(arms) < 2:
            continue
        n = min(len(steps) for _, steps, _ in arms)
        steps = list(arms[0][1][:n])
        curves = {name: losses[:, :n] for name, _, losses in arms}
        means = {name: c.mean(0) for name, c in curves.items()}
        rankings = [tuple(sorted(means, key=lambda name: means[name][i])) for i in range(n)]
        pairs = [{"arm": a, "other": b, **stats.curve_difference(steps, curves[a], curves[b])}
                 for i, a in enumerate(rankings[-1]) for b in rankings[-1][i + 1:]]
        groups.append({"task": task, "steps": [int(s) for s in steps], "final_ranking": list(rankings[-1]),
                       "settled_from": stats.settling_step(steps, rankings), "pairs": pairs})
    return groups


def _fmt_steps(value: float, cap: int) -> str:
    return f"> {cap}" if not np.isfinite(value) else f"{value:.0f}"


def _scaling(experiment, arms: list[dict], records: list[dict]) -> dict:
    groups = collections.defaultdict(lambda: ([], []))
    for record in records:
        if record.get("shared_nll_per_example"):
            n, losses = groups[record["group"]]
            n.append(record["non_embedding_params"])
            losses.append(float(np.mean(record["shared_nll_per_example"])))
    return {group: {**_fit(n, losses, irreducible_loss=True), "points": list(zip(n, losses)),
                    "kaplan": _fit(n, losses, irreducible_loss=False)} for group, (n, losses) in sorted(groups.items())}


def _fit(n: list, losses: list, irreducible_loss: bool) -> dict:
    """One scaling fit as the report keeps it: E, A and alpha's interval, or the error."""
    try:
        fit = stats.fit_scaling_law(n, losses, irreducible_loss=irreducible_loss)
    except (ValueError, RuntimeError) as e:
        return {"error": str(e)}
    return {"E": fit.E, "A": fit.A, "alpha": fit.alpha_interval.as_dict()}


def _fmt_interval(d: dict | None) -> str:
    return "—" if not d else f"{d['estimate']:.4f} [{d['low']:.4f}, {d['high']:.4f}]"


def render_markdown(results: dict) -> str:
    ref = results["reference_arm"]
    lines = [f"# Comparison: {results['experiment']}", ""]
    if results["description"]:
        lines += [results["description"], ""]
    lines += [
        f"Training task `{results['task']}`, {results['train_steps']} steps × batch {results['batch_size']}, "
        f"seeds {results['seeds']}. Shared metric: NLL per target token on the first validation examples "
        f"of each arm's eval task (default `{results['eval_task']}`; the same examples for every arm with "
        "that task), mean over seeds and examples "
        "with a 95% bootstrap interval over both. P and M are the reference arm's "
        f"(`{ref}`) non-embedding parameters and training FLOPs per example.", "",
        *([f"**Not finished ({len(results['missing_runs'])} runs, left out of every number below)**: "
           + ", ".join(results["missing_runs"]) + ".", ""] if results.get("missing_runs") else []),
        "## How the arms were matched", "",
        "| arm | layout | layers | params | non-emb params | × P | train FLOPs/example | × M | claims | tokens seen |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for a in results["arms"]:
        claims = ", ".join(f"{k}={v}" for k, v in a["claims"].items()) or "—"
        lines.append(f"| {a['arm']} | {a['layout']} | {a['layers']} | {a['params']:,} | {a['non_embedding_params']:,} "
                     f"| {a['params_ratio']:.3f} | {a['train_flops_per_example']:.3e} | {a['flops_ratio']:.3f} "
                     f"| {claims} | {a.get('tokens_seen', 0):,} |")
    transfer = [a["arm"] for a in results["arms"] if a.get("task") and a["eval_task"] and a["task"] != a["eval_task"]]
    if transfer:
        lines += ["", f"Note: {', '.join(transfer)} trained on another objective than their eval task; their "
                  "shared metric measures transfer to it, not quality on their own objective (compare those "
                  "arms downstream: `compare.Experiment.downstream_tasks`)."]
    lines += ["", "## Results", "",
              "| arm | eval task | shared NLL/token [95% CI] | own objective eval loss (mean over seeds) | convergence |",
              "|---|---|---|---|---|"]
    for a in results["arms"]:
        own = a.get("own_objective_eval_loss")
        lines.append(f"| {a['arm']} | {a['eval_task']} | {_fmt_interval(a.get('shared_nll'))} | "
                     f"{'—' if own is None else f'{own:.4f}'} | {a.get('convergence', '—')} |")
    downstream = [(a["arm"], task, metrics) for a in results["arms"] for task, metrics in (a.get("downstream") or {}).items()]
    if downstream:
        lines += ["", "## Downstream (mean over seeds)", "", "| arm | task | metrics |", "|---|---|---|"]
        for arm, task, metrics in downstream:
            shown = ", ".join(f"{name} {value:.4g}" for name, value in sorted(metrics.items()))
            lines.append(f"| {arm} | {task} | {shown} |")
    if results.get("protocols"):
        lines += ["", "## Pretraining loss vs downstream: do they rank the arms alike?", "",
                  "Kendall's τ between the order by pretraining loss (lower first) and by the downstream metric "
                  "(better first), on means over seeds: 1 = the same order, −1 = reversed; p: of τ = 0 over the "
                  "orders of these arms (seed noise is not in it).", "",
                  "| pretraining loss | arms | downstream task | metric | τ | p |", "|---|---|---|---|---|---|"]
        for row in results["protocols"]:
            tau = ("— (equal for every arm, or not finite) | —" if row["kendall_tau"] is None
                   else f"{row['kendall_tau']:+.2f} | {row['p_value']:.2f}")
            lines.append(f"| {row['pretraining']} | {len(row['arms'])} | {row['task']} | {row['metric']} | {tau} |")
    if results.get("prompted"):
        lines += prompted_eval.markdown_section(results["prompted"])
    if results.get("zero_shot_phases"):
        lines += zero_shot_phases.phase_section(results["zero_shot_phases"])
    lines += ["", "## Differences (arm − reference of its eval task, then the experiment's comparisons; shared metric)", ""]
    lines += [f"- {d['sentence']}" for d in results["differences"]] or ["- (no shared-metric scores)"]
    if results.get("adaptation"):
        lines += ["", "## Adaptation (eval loss of the run's own task; steps of the from-scratch baseline it is worth)",
                  "", "| arm | starts from | steps: source + adapted = total | adapted final loss | baseline | "
                  "baseline loss at the same total | worth baseline steps [95% CI] | saved steps [95% CI] |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in results["adaptation"]:
            worth, saved, cap = row["worth_baseline_steps"], row["saved_steps"], row["baseline_steps"]
            at_total = row["baseline_loss_at_total"]
            lines.append(
                f"| {row['arm']} | {row['init_from']} | {row['source_steps']} + {row['adapted_steps']} = "
                f"{row['total_steps']} | {row['adapted_final_loss']:.4f} | {row['baseline']} | "
                f"{'—' if at_total is None else f'{at_total:.4f}'} | {_fmt_steps(worth['estimate'], cap)} "
                f"[{_fmt_steps(worth['low'], cap)}, {_fmt_steps(worth['high'], cap)}] | "
                f"{_fmt_steps(saved['estimate'], cap - row['total_steps'])} [{_fmt_steps(saved['low'], cap - row['total_steps'])}, "
                f"{_fmt_steps(saved['high'], cap - row['total_steps'])}] |")
        lines += ["", "Worth = the step at which the baseline's mean eval curve first reaches the adapted runs' "
                  "mean final loss (linear between evaluations; bootstrap over the seeds of both). "
                  "Saved = worth − total: positive means adapting beat training the target from scratch at "
                  "equal compute."]
    lines += _render_ranking(results.get("ranking") or [])
    if results.get("scaling"):
        lines += ["", "## Scaling fits L(N) = E + A·N^(−α), and Kaplan's form A·N^(−α)", "",
                  "N: non-embedding parameters; loss: the shared metric, one point per run. Intervals resample "
                  "the seeds of each size.", "",
                  "| group | α [95% CI] | E | A | α, Kaplan's form [95% CI] |", "|---|---|---|---|---|"]
        for group, fit in results["scaling"].items():
            kaplan = fit.get("kaplan", {})
            kaplan_alpha = kaplan.get("error") or _fmt_interval(kaplan.get("alpha"))
            if "error" in fit:
                lines.append(f"| {group} | {fit['error']} | | | {kaplan_alpha} |")
            else:
                lines.append(f"| {group} | {_fmt_interval(fit['alpha'])} | {fit['E']:.3f} | {fit['A']:.3g} | "
                             f"{kaplan_alpha} |")
    if results.get("machine"):
        lines += ["", "## Machine", "", f"Report written on: {machine.machine_line(results['machine'])}.",
                  *[f"Runs trained on: {line}." for line in results.get("trained_on") or []],
                  "The numbers are bitwise reproducible on one machine; on another CPU type (other vector "
                  "extensions) or accelerator their last digits move, and the verdicts are the claim."]
    lines += ["", "Files: results.json and results.csv (every number above), loss_curves.png, metrics/ "
              "(each run's JSONL log). Each run's exact command is in its result.json."]
    return "\n".join(lines) + "\n"


def _render_ranking(groups: list[dict]) -> list[str]:
    if not groups:
        return []
    lines = ["", "## When the ranking settles (eval loss of each run's own task, at every evaluation)", "",
             "A lead is *resolved* from the first evaluation after which its 95% interval over seeds "
             "(bootstrap; the eval examples are fixed, so only seed noise is in it) excludes 0 at every "
             "later evaluation. A crossing is an evaluation where the sign of the mean difference flipped.", ""]
    for group in groups:
        lines += [f"Task `{group['task']}`: final order (lowest loss first) {', '.join(group['final_ranking'])}; "
                  f"this order holds from step {group['settled_from']} of {group['steps'][-1]} on.", "",
                  "| pair (leader vs other) | difference at first eval [95% CI] | at last eval [95% CI] | "
                  "crossings at steps | lead resolved from step |", "|---|---|---|---|---|"]
        for pair in group["pairs"]:
            first, last = pair["differences"][0], pair["differences"][-1]
            lines.append(f"| {pair['arm']} vs {pair['other']} | {_fmt_interval(first)} (step {pair['steps'][0]}) | "
                         f"{_fmt_interval(last)} | {', '.join(map(str, pair['crossings'])) or 'none'} | "
                         f"{pair['resolved_from'] if pair['resolved_from'] is not None else 'not resolved'} |")
        lines.append("")
    return lines[:-1]


def write_csv(results: dict, path: str) -> None:
    columns = ["arm", "layout", "layers", "params", "non_embedding_params", "params_ratio", "train_flops_per_example",
               "flops_ratio", "tokens_seen", "steps", "own_objective_eval_loss"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + ["shared_nll", "shared_nll_low", "shared_nll_high"])
        for a in results["arms"]:
            shared = a.get("shared_nll") or {}
            writer.writerow([a.get(c) for c in columns] + [shared.get("estimate"), shared.get("low"), shared.get("high")])


def plot_loss_curves(experiment, results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_flops) = plt.subplots(1, 2, figsize=(11, 4))
    for arm_row in results["arms"]:
        curves = [run_eval_curve(experiment, arm_row["arm"], s) for s in arm_row["seeds"]]
        curves = [c for c in curves if c[0]]
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)
        steps = np.asarray(curves[0][0][:n])
        losses = np.asarray([c[1][:n] for c in curves])
        flops = steps * experiment.batch_size * arm_row["train_flops_per_example"]
        for axis, x in ((by_step, steps), (by_flops, flops)):
            line, = axis.plot(x, losses.mean(0), label=arm_row["arm"])
            axis.fill_between(x, losses.min(0), losses.max(0), color=line.get_color(), alpha=0.2)
    by_step.set_xlabel("step")
    by_flops.set_xlabel("training FLOPs")
    by_flops.set_xscale("log")
    for axis in (by_step, by_flops):
        axis.set_ylabel("validation loss (own objective)")
        axis.legend()
    fig.suptitle(f"{results['experiment']}: mean over seeds, band = min..max")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(experiment, size_rows: dict, records: list[dict]) -> list[str]:
    out = experiment.output_dir
    os.makedirs(os.path.join(out, "metrics"), exist_ok=True)
    results = build_results(experiment, size_rows, records)
    paths = {name: os.path.join(out, name) for name in ("report.md", "results.json", "results.csv", "loss_curves.png")}
    with open(paths["results.json"], "w") as f:
        json.dump(results, f, indent=1)
    with open(paths["report.md"], "w") as f:
        f.write(render_markdown(results))
    write_csv(results, paths["results.csv"])
    plot_loss_curves(experiment, results, paths["loss_curves.png"])
    for record in records:
        source = os.path.join(run_dir_of(out, record["arm"], record["seed"]), "metrics.jsonl")
        if os.path.exists(source):
            shutil.copy(source, os.path.join(out, "metrics", f"{record['arm']}_seed{record['seed']}.jsonl"))
    return list(paths.values()) + [os.path.join(out, "metrics/")]
