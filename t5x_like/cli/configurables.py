"""Every gin configurable, registered in one place, under the names gin files use.

The library is plain Python: no class or function below it imports gin. This
module makes them configurable from outside (`gin.external_configurable`),
under stable gin names that do not move when a Python module does:

    gin name                     library object
    config.TransformerConfig     model.config.TransformerConfig
    models.Model                 model.model.Model
    train.TrainConfig            training.run.TrainConfig
    train.run_mode               which program a run file asks for (below)
    optimizers.*                 training.optimizers (adafactor, adamw, schedules)
    decoding.DecodeConfig        inference.decoding.DecodeConfig
    compare.Experiment           experiments.spec.Experiment
    t5x_like.data.vocab.sentencepiece_vocabulary, t5x_like.data.tasks.register_text_files_task
    t5x_like.data.tasks.tfds_data_dir, t5x_like.data.tasks.ul2_mixing_rates,
    t5x_like.data.tasks.mlm_rate, t5x_like.data.tasks.vocabulary, t5x_like.data.tasks.embedding_rows
                                 data settings (`*_binding` below: the gin name is the
                                 part before it): where TFDS data lives, UL2 rates, the
                                 MLM masking rate, and the vocabulary of every task (`vocabulary.sentencepiece_model`:
                                 a .model file; unset: bytes); `apply_data_settings`
                                 hands them to data.tasks.configure

Gin files import this module (`import t5x_like.cli.configurables`), and every
command imports it before parsing. The `configured_*` names are the gin-aware
constructors: calling one fills in what the parsed files bind.
"""
from __future__ import annotations

from collections.abc import Sequence

import gin

from t5x_like.data import objectives, tasks, vocab
from t5x_like.experiments import spec
from t5x_like.inference import decoding
from t5x_like.model import config, model
from t5x_like.training import optimizers, run

RUN_MODES = ("train", "eval", "infer")

configured_transformer_config = gin.external_configurable(config.TransformerConfig, module="config")
configured_model = gin.external_configurable(model.Model, module="models")
configured_train_config = gin.external_configurable(run.TrainConfig, module="train")
configured_decode_config = gin.external_configurable(decoding.DecodeConfig, module="decoding")
configured_experiment = gin.external_configurable(spec.Experiment, module="compare")
for _factory in (optimizers.inverse_sqrt_schedule, optimizers.warmup_cosine_schedule,
                 optimizers.constant_schedule, optimizers.adafactor, optimizers.adamw, optimizers.sgd):
    gin.external_configurable(_factory, module="optimizers")
gin.external_configurable(vocab.sentencepiece_vocabulary, module="t5x_like.data.vocab")
gin.external_configurable(tasks.register_text_files_task, module="t5x_like.data.tasks")


@gin.configurable(module="train")
def run_mode(mode: str = "train") -> str:
    """Which program a run gin file asks for: 'train' (pretrain, finetune), 'eval'
    (teacher-forced loss) or 'infer' (generation + task metrics, as `t5x-like eval`)."""
    if mode not in RUN_MODES:
        raise ValueError(f"run_mode.mode={mode!r}: expected 'train', 'eval' or 'infer'")
    return mode


@gin.configurable("tfds_data_dir", module="t5x_like.data.tasks")
def tfds_data_dir_binding(data_dir: str | None = None) -> str | None:
    """Where prepared TFDS datasets live (None: $TFDS_DATA_DIR, else ~/tensorflow_datasets)."""
    return data_dir


@gin.configurable("ul2_mixing_rates", module="t5x_like.data.tasks")
def ul2_mixing_rates_binding(rates: Sequence[float] = objectives.UL2_DEFAULT_RATES) -> tuple[float, ...]:
    """Rate of each UL2 denoiser, in the order of objectives.UL2_DENOISERS."""
    return tuple(rates)


@gin.configurable("mlm_rate", module="t5x_like.data.tasks")
def mlm_rate_binding(rate: float = objectives.MLM_DEFAULT_RATE) -> float:
    """Fraction of positions every *_mlm task selects for prediction (BERT: 0.15)."""
    return rate


@gin.configurable("vocabulary", module="t5x_like.data.tasks")
def vocabulary_binding(sentencepiece_model: str | None = None, extra_ids: int = vocab.NUM_EXTRA_IDS):
    """The vocabulary of every pretraining and downstream task: bytes (no model file), or the
    SentencePiece model file `sentencepiece_model` (T5's cc_all.32000, or `t5x-like vocab`'s)
    with `extra_ids` extra ids after its pieces (at least 104: sentinels, UL2 modes, [MASK]; or
    exactly 100: T5's sentinel ids, the modes and [MASK] above the vocabulary: data/vocab.py)."""
    if sentencepiece_model is None:
        if extra_ids != vocab.NUM_EXTRA_IDS:
            raise ValueError(f"vocabulary.extra_ids={extra_ids} needs vocabulary.sentencepiece_model; "
                             f"the byte vocabulary always has {vocab.NUM_EXTRA_IDS}")
        return vocab.default_vocabulary()
    return vocab.sentencepiece_vocabulary(sentencepiece_model, extra_ids)


@gin.configurable("embedding_rows", module="t5x_like.data.tasks")
def embedding_rows_binding() -> int:
    """A model's vocab_size that follows the configured vocabulary (its size rounded up to
    128): `--gin.VOCAB_SIZE=@t5x_like.data.tasks.embedding_rows()`."""
    return vocab.embedding_rows(vocabulary_binding())


def apply_data_settings() -> None:
    """Hands the parsed data settings to the data package (defaults where unbound); a changed
    vocabulary re-registers the tasks with it."""
    tasks.configure(tfds_data_dir=tfds_data_dir_binding(), ul2_mixing_rates=ul2_mixing_rates_binding(),
                    vocabulary=vocabulary_binding(), mlm_rate=mlm_rate_binding())


@gin.configurable(module="t5x_like.cli")
def _macro_value(value=gin.REQUIRED):
    return value
