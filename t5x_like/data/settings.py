"""The data settings of a process, as one frozen value: vocabulary, objective rates, TFDS dir.

Owns `DataSettings` (what `data.tasks.configure` applies, what a run saves in
MODEL_DIR/model_config.json and what a reader applies back) and the value in
force (`current`). Plain values only (no seqio, no TensorFlow), so training
can record them without loading the data pipeline. `data.tasks` turns a value
into a vocabulary and registered tasks; gin fills one in on the command line.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Settings every registered task follows. None: the default (`data.tasks.configure`'s)."""

    tfds_data_dir: str | None = None               # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets
    ul2_mixing_rates: tuple[float, ...] | None = None  # one per objectives.UL2_DENOISERS
    mlm_rate: float | None = None                  # fraction of positions every *_mlm task predicts
    sentencepiece_model: str | None = None         # None: the byte vocabulary
    extra_ids: int | None = None                   # with a SentencePiece model (vocab.NUM_EXTRA_IDS)

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        if fields["ul2_mixing_rates"] is not None:
            fields["ul2_mixing_rates"] = list(fields["ul2_mixing_rates"])
        return fields

    @classmethod
    def from_dict(cls, fields: dict) -> "DataSettings":
        """The settings `to_dict` wrote; ValueError naming a field this version does not know."""
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown data setting(s) {', '.join(unknown)}: written by a newer t5x_like?")
        rates = fields.get("ul2_mixing_rates")
        return cls(**{**fields, "ul2_mixing_rates": None if rates is None else tuple(rates)})


_CURRENT = [DataSettings()]


def current() -> DataSettings:
    """The settings in force in this process (as `data.tasks.configure` last set them)."""
    return _CURRENT[0]


def set_current(settings: DataSettings) -> None:
    """Records the settings in force; only `data.tasks.configure` calls it (it also re-registers)."""
    _CURRENT[0] = settings
