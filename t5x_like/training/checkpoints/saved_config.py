"""The model config a MODEL_DIR holds: `model_config.json`, gin-free, beside its checkpoints.

    {"format": 1,
     "model": {...every TransformerConfig field...},
     "task_feature_lengths": {"inputs": 64, "targets": 64},   # the training run's ({} if converted)
     "data": {...DataSettings: vocabulary, objective rates, TFDS dir...},
     "written_by": "t5x-like train"}

`train()` and the Hugging Face converter write it; every reader of a
checkpoint (evaluation, inference, finetuning's init and layout adaptation,
export) rebuilds the model from it, so none needs a gin file. The gin files a
run also leaves (`config.gin`, `operative_config.gin`) are a human record; a
MODEL_DIR written before this file existed has only them, and `read_model_config`
returns None there (the command line then reads `config.gin` with gin).
"""
from __future__ import annotations

import dataclasses
import json
import os

from etils import epath

from t5x_like.data.settings import DataSettings
from t5x_like.model.config import TransformerConfig
from t5x_like.training.checkpoints.integrity import CheckpointError
from t5x_like.training.checkpoints.reading import resolve_checkpoint

MODEL_CONFIG_FILE = "model_config.json"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class SavedModelConfig:
    model: TransformerConfig
    task_feature_lengths: dict[str, int] = dataclasses.field(default_factory=dict)  # {}: unknown (converted)
    data: DataSettings = DataSettings()
    written_by: str = ""


def write_model_config(run_dir: str, saved: SavedModelConfig) -> str:
    """Writes MODEL_DIR/model_config.json (atomically: a reader never sees half a file); its path."""
    directory = epath.Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    document = {"format": FORMAT, "model": saved.model.to_dict(),
                "task_feature_lengths": dict(saved.task_feature_lengths), "data": saved.data.to_dict(),
                "written_by": saved.written_by}
    partial = directory / f"{MODEL_CONFIG_FILE}.tmp-{os.getpid()}"
    partial.write_text(json.dumps(document, indent=1, sort_keys=True))
    partial.replace(directory / MODEL_CONFIG_FILE)
    return str(directory / MODEL_CONFIG_FILE)


def read_model_config(path: str) -> SavedModelConfig | None:
    """The config saved in the MODEL_DIR of `path` (MODEL_DIR, its checkpoints/ or a step folder);
    None if that MODEL_DIR has no model_config.json (written before it existed). CheckpointError
    (naming the file and the fix) if the file cannot be read as a model config."""
    file = epath.Path(resolve_checkpoint(path).run_dir) / MODEL_CONFIG_FILE
    if not file.exists():
        return None
    try:
        document = json.loads(file.read_text())
        if document.get("format") != FORMAT:
            raise ValueError(f"format {document.get('format')!r}, this version reads format {FORMAT}")
        return SavedModelConfig(TransformerConfig.from_dict(document["model"]),
                                {k: int(v) for k, v in document.get("task_feature_lengths", {}).items()},
                                DataSettings.from_dict(document.get("data", {})), document.get("written_by", ""))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{file} is not a readable model config ({type(e).__name__}: {e}); repair it, "
                              "or move it away: commands then read the run's config.gin") from None
