"""Matching claims: an arm's size and cost relative to the reference arm, checked on its config.

An arm may claim, T5 Table 2 style, `'claims': {'params': 'P', 'flops': 'M'}`,
with P = the reference arm's non-embedding parameters and M = its training
FLOPs per example (model/sizing.py). `sizes` measures every arm's config,
`check_claims` lists the claims that do not hold (tests run it on every
shipped experiment; the report prints the measured ratios).
"""
from __future__ import annotations

import re

from t5x_like.experiments.spec import Experiment, arm_lengths
from t5x_like.model import sizing
from t5x_like.model.config import TransformerConfig


def parse_multiple(claim: str, unit: str) -> float:
    """'2P' -> 2.0, 'P/2' -> 0.5, 'M' -> 1.0, '1.5M' -> 1.5."""
    match = re.fullmatch(rf"\s*([0-9.]*)\s*{unit}\s*(?:/\s*([0-9.]+))?\s*", claim)
    if not match:
        raise ValueError(f"claim {claim!r}: expected e.g. '{unit}', '2{unit}' or '{unit}/2'")
    return float(match.group(1) or 1.0) / float(match.group(2) or 1.0)


def sizes(experiment: Experiment, model_configs: dict[str, TransformerConfig]) -> dict[str, dict]:
    """Per arm: config summary plus ratios to the reference arm's P and M. `model_configs`: each
    arm's model as its runs train it, by arm name."""
    rows = {}
    for arm in experiment.arms:
        config = model_configs[arm.name]
        inputs_length, targets_length = arm_lengths(experiment, arm)
        rows[arm.name] = {**sizing.summary(config, inputs_length, targets_length),
                          "non_embedding_params": sizing.count_params(config).non_embedding,
                          "inputs_length": inputs_length, "targets_length": targets_length}
    reference = rows[experiment.reference_arm or experiment.arms[0].name]
    for row in rows.values():
        row["params_ratio"] = row["non_embedding_params"] / reference["non_embedding_params"]
        row["flops_ratio"] = row["train_flops_per_example"] / reference["train_flops_per_example"]
    return rows


def check_claims(experiment: Experiment, size_rows: dict) -> list[str]:
    """Claims that the configs (`sizes`) do not satisfy within the tolerance (empty = all hold)."""
    failures = []
    for arm in experiment.arms:
        row = size_rows[arm.name]
        for kind, unit, measured in (("params", "P", row["params_ratio"]), ("flops", "M", row["flops_ratio"])):
            if kind in arm.claims:
                claimed = parse_multiple(arm.claims[kind], unit)
                if abs(measured - claimed) > experiment.claim_tolerance * claimed:
                    failures.append(f"{arm.name}: claims {kind} = {arm.claims[kind]} but measures "
                                    f"{measured:.4f}{unit} (tolerance {experiment.claim_tolerance:.0%})")
    return failures
