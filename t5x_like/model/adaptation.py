"""Layout adaptation: which parameters of one layout's tree become which of another's.

Owns the plan for initialising a model from a checkpoint of another layout or
objective (Wang et al. 2022: a causal decoder adapted into a non-causal one and
back, an MLM encoder adapted into a generative decoder) and the conversion of
the tensors that differ. Works on flat {path: shape} maps and numpy arrays;
reading and writing checkpoints is training/checkpoints/'s.

What carries over, by layout pair (decoder_only, prefix_lm and encoder_only
share one stack of identical blocks; they differ in the mask and in T5's
relative-position table):

  same layout            everything (an objective change: causal LM -> UL2 ...)
  decoder_only <-> prefix_lm
                         every tensor; the relative-position table gains or
                         loses its second block of buckets (pairs inside the
                         prefix): gained, it is filled from the causal block
                         (see `convert_relpos_table`); lost, it is dropped
  encoder_only -> decoder_only / prefix_lm, and back
                         the stack is renamed (encoder_* <-> decoder_*); the
                         bidirectional table becomes the causal one (and the
                         prefix block is the bidirectional table itself)
  encoder_decoder <-> any other layout
                         refused: cross-attention and the second stack have no
                         counterpart without a stated mapping

A relative-position row is carried by distance: each bucket of the new table
takes the old row of the same relative position (the smallest |distance| that
falls in the new bucket); a future key with no row of its own in a causal table
takes the row of the same distance in the past. Anything else that differs in
shape is an error naming the tensors.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from t5x_like.model import positions
from t5x_like.model.config import TransformerConfig

RELPOS_TABLE = "relpos_bias/rel_embedding"  # a substring of the table's path
STACKS = ("encoder", "decoder")


class AdaptationError(ValueError):
    """Two parameter trees that no documented mapping bridges; the message names the tensors."""


@dataclasses.dataclass(frozen=True)
class TreeFacts:
    """What a parameter tree says about its model: its stacks and its relative table's mode."""

    stacks: tuple[str, ...]          # "encoder", "decoder" or both
    relpos_mode: str | None          # "causal", "bidirectional", "prefix" or None (no relative table)
    cross_attention: bool

    @classmethod
    def of(cls, shapes: Mapping[str, tuple], num_buckets: int, layout: str | None = None) -> "TreeFacts":
        """The facts of a tree ({path: shape}). `layout`: its model's, when known (a checkpoint's
        saved config says); without it a table of 2 * num_buckets rows is read as a prefix-LM's."""
        stacks = tuple(s for s in STACKS if any(_in_stack(p, s) for p in shapes))
        cross = any("cross_attention" in p for p in shapes)
        tables = [p for p in shapes if RELPOS_TABLE in p]
        mode = None
        if tables:
            is_prefix = layout == "prefix_lm" if layout else shapes[tables[0]][0] == 2 * num_buckets
            mode = "prefix" if is_prefix else "bidirectional" if stacks == ("encoder",) else "causal"
        return cls(stacks, mode, cross)


@dataclasses.dataclass
class AdaptationPlan:
    """How to fill every target tensor: loaded (from which source tensor, converted how),
    freshly initialised, and which source tensors are dropped."""

    loads: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray] | None]]
    initialized: list[str]
    dropped: list[str]
    adapted: bool                    # anything beyond an exact, same-tree load

    def describe(self) -> str:
        converted = sorted(t for t, (_, fn) in self.loads.items() if fn is not None)
        renamed = sorted(t for t, (s, _) in self.loads.items() if s != t)
        parts = [f"{len(self.loads)} tensors loaded"]
        if renamed:
            parts.append(f"{len(renamed)} renamed from the other stack")
        if converted:
            parts.append(f"converted: {', '.join(converted)}")
        parts.append(f"initialised fresh: {', '.join(self.initialized) or 'none'}")
        parts.append(f"dropped: {', '.join(self.dropped) or 'none'}")
        return "; ".join(parts)


def _in_stack(path: str, stack: str) -> bool:
    return any(part.startswith(stack + "_") for part in path.split("/"))


def _rename_stack(path: str, source: str, target: str) -> str:
    return "/".join(target + part[len(source):] if part.startswith(source + "_") else part
                    for part in path.split("/"))


def adaptation_plan(source: Mapping[str, tuple], target: Mapping[str, tuple], target_config: TransformerConfig,
                    source_config: TransformerConfig | None = None) -> AdaptationPlan:
    """The mapping from a source tree to a target tree ({path: shape} each), or AdaptationError.

    `source_config`: the config the source checkpoint was trained with (its model_config.json);
    its layout and relative-position buckets decide how its table is read. Without it (a
    checkpoint written before configs were saved) the source is assumed to share the target's
    bucket settings."""
    source_config = source_config or target_config
    src = TreeFacts.of(source, source_config.relative_num_buckets,
                        source_config.layout if source_config is not target_config else None)
    dst = TreeFacts.of(target, target_config.relative_num_buckets, target_config.layout)
    src_buckets = (source_config.relative_num_buckets, source_config.relative_max_distance)
    dst_buckets = (target_config.relative_num_buckets, target_config.relative_max_distance)
    if dict(source) == dict(target) and src == dst and (src_buckets == dst_buckets or src.relpos_mode is None):
        return AdaptationPlan({p: (p, None) for p in target}, [], [], adapted=False)
    if src.stacks != dst.stacks and (len(src.stacks) != 1 or len(dst.stacks) != 1):
        missing = sorted(p for p in target if not any(_in_stack(p, s) for s in src.stacks) and
                         any(_in_stack(p, s) for s in STACKS))
        raise AdaptationError(
            f"no mapping from a model with stacks {src.stacks} to one with {dst.stacks}: "
            f"{len(missing)} target tensors have no counterpart, e.g. {', '.join(missing[:3])}; "
            "adaptation bridges decoder-only, prefix-LM and encoder-only, not encoder-decoder")
    if src.cross_attention != dst.cross_attention:
        raise AdaptationError("no mapping for cross-attention between these trees")
    rename = (lambda p: _rename_stack(p, dst.stacks[0], src.stacks[0])) if src.stacks != dst.stacks else (
        lambda p: p)
    loads, initialized, mismatched = {}, [], []
    for path, shape in sorted(target.items()):
        origin = rename(path)
        if origin not in source:
            initialized.append(path)
        elif RELPOS_TABLE in path and (src.relpos_mode != dst.relpos_mode or src_buckets != dst_buckets):
            loads[path] = (origin, _relpos_converter(src.relpos_mode, dst.relpos_mode, dst_buckets, src_buckets))
        elif tuple(source[origin]) == tuple(shape):
            loads[path] = (origin, None)
        else:
            mismatched.append(f"{path}: checkpoint {tuple(source[origin])} vs model {tuple(shape)}")
    if mismatched:
        raise AdaptationError(f"{len(mismatched)} tensors differ in shape (another width or size?): "
                              + "; ".join(mismatched[:4]))
    used = {origin for origin, _ in loads.values()}
    dropped = sorted(p for p in source if p not in used)
    if initialized:  # every bridged tensor is carried or converted; none is documented as fresh
        raise AdaptationError(f"{len(initialized)} model tensors are not in the checkpoint and have no "
                              f"documented initialisation: {', '.join(initialized[:4])}")
    return AdaptationPlan(loads, initialized, dropped, adapted=True)


# -- relative-position tables ---------------------------------------------------------------
def _relpos_converter(source_mode: str, target_mode: str, target_buckets: tuple[int, int],
                      source_buckets: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    def convert(table: np.ndarray) -> np.ndarray:
        return convert_relpos_table(table, source_mode, target_mode, *target_buckets, source_buckets=source_buckets)
    return convert


def convert_relpos_table(table: np.ndarray, source_mode: str, target_mode: str, num_buckets: int,
                         max_distance: int, source_buckets: tuple[int, int] | None = None) -> np.ndarray:
    """The relative-position table of `target_mode` ("causal", "bidirectional", "prefix")
    with every row taken from `table` (of `source_mode`) at the same relative position.

    `num_buckets`, `max_distance`: the target's bucket settings; `source_buckets`: the
    source's (num_buckets, max_distance), when they differ. Prefix tables are a causal
    block (rows [0, num_buckets)) then a bidirectional block (pairs inside the prefix).
    A row's relative position is the smallest |key - query| that falls in its bucket; a
    source without the needed kind of block reads the other kind (a future key from a
    causal block: the same distance in the past)."""
    source_num, source_max = source_buckets or (num_buckets, max_distance)
    same_buckets = (source_num, source_max) == (num_buckets, max_distance)
    blocks = {"causal": ["causal"], "bidirectional": ["bidirectional"], "prefix": ["causal", "bidirectional"]}
    source_blocks = {kind: table[i * source_num:(i + 1) * source_num]
                     for i, kind in enumerate(blocks[source_mode])}
    rows = []
    for kind in blocks[target_mode]:
        source_kind = kind if kind in source_blocks else next(iter(source_blocks))
        block = source_blocks[source_kind]
        if source_kind == kind and same_buckets:  # the same buckets: the block itself
            rows.extend(block)
            continue
        for relative in _representatives(kind, num_buckets, max_distance):
            if source_kind == "causal":
                relative = -abs(relative)  # a causal table has rows for past keys only
            rows.append(block[_bucket(relative, source_kind, source_num, source_max)])
    return np.stack(rows).astype(table.dtype)


def _bucket(relative: int, kind: str, num_buckets: int, max_distance: int) -> int:
    return int(_buckets(np.array([relative]), kind, num_buckets, max_distance)[0])


def _buckets(relative: np.ndarray, kind: str, num_buckets: int, max_distance: int) -> np.ndarray:
    return np.asarray(positions.relative_position_bucket(relative, bidirectional=kind == "bidirectional",
                                                         num_buckets=num_buckets, max_distance=max_distance))


def _representatives(kind: str, num_buckets: int, max_distance: int) -> list[int]:
    """For each bucket of `kind`, the relative position (key - query) of smallest magnitude in
    it; a bucket no position falls in (T5's bidirectional bucket num_buckets/2) takes 0's."""
    span = 4 * max_distance
    relatives = np.array(sorted(range(-span, span + 1), key=lambda r: (abs(r), r)))
    found: dict[int, int] = {}
    for relative, bucket in zip(relatives.tolist(), _buckets(relatives, kind, num_buckets, max_distance).tolist()):
        found.setdefault(bucket, relative)
    return [found.get(b, 0) for b in range(num_buckets)]
