"""Shared pieces of the Hugging Face converters: files, tensors, params trees, MODEL_DIR.

Owns: reading and writing an HF directory's `config.json` and weights
(safetensors, sharded or not; `pytorch_model.bin` when torch is installed),
the `TensorSource` that hands out HF tensors with shape checks, checking a
params tree against a `TransformerConfig`, and the converted MODEL_DIR layout:

    MODEL_DIR/model_config.json        the architecture, what every reader rebuilds the model
                                       from (`training.checkpoints.read_model_config`)
    MODEL_DIR/model.gin                the same as gin (`MODEL = @models.Model()`), a file to
                                       pass to `t5x-like train` when finetuning from it
    MODEL_DIR/checkpoints/0/params     the params tree, written by `checkpoints.Checkpointer`
    MODEL_DIR/checkpoints/0/meta       (read with `checkpoints.load_params`)
    MODEL_DIR/hf/                      the source config.json and tokenizer files

Does not own: which HF tensor becomes which parameter (`hf_t5.py`,
`hf_gpt2.py`, `hf_llama.py`), the import/export steps (`convert.py`) or the command line
(`cli/convert.py`).

Only numpy and safetensors are needed to convert safetensors weights;
torch only for `pytorch_model.bin`; transformers only for the GPT-2 tokenizer.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import numpy as np

from t5x_like.model.config import TransformerConfig
from t5x_like.model.model import Model
from t5x_like.training import checkpoints

Params = dict[str, Any]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
# Copied from the HF directory into MODEL_DIR/hf and back on export.
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")
MODEL_GIN = "model.gin"
HF_SUBDIR = "hf"
CHECKPOINT_STEP = 0

# Our activation name <-> HF's ACT2FN name. Only exact equivalents are listed.
ACTIVATIONS_FROM_HF = {"relu": "relu", "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
                       "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu", "swish": "silu", "linear": "linear"}
ACTIVATIONS_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu", "linear": "linear"}


class ConversionError(ValueError):
    """An HF directory or a model that cannot be converted; the message names the field or tensor."""


# --- HF directories ------------------------------------------------------------
def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, CONFIG_FILE)
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"{hf_dir!r} is not a directory")
    if not os.path.exists(path):
        raise ConversionError(f"{hf_dir!r} has no {CONFIG_FILE}: pass a directory written by "
                              "`save_pretrained` (config.json + model.safetensors)")
    with open(path) as f:
        return json.load(f)


def read_hf_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """All weights of an HF directory as float32/int numpy arrays, by HF name."""
    def in_dir(name):
        return os.path.join(hf_dir, name)

    for index_name, single in ((SAFETENSORS_INDEX, SAFETENSORS_FILE), (TORCH_INDEX, TORCH_FILE)):
        if os.path.exists(in_dir(index_name)):
            with open(in_dir(index_name)) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.exists(in_dir(single)):
            files = [single]
        else:
            continue
        tensors: dict[str, np.ndarray] = {}
        for name in files:
            tensors.update(_read_weights_file(in_dir(name)))
        return tensors
    raise ConversionError(f"{hf_dir!r} has no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
                          f"{TORCH_FILE} or {TORCH_INDEX}")


def _read_weights_file(path: str) -> dict[str, np.ndarray]:
    """Every tensor of one weights file; ConversionError (one line) if the file is truncated or not weights."""
    try:
        return _read_weights(path)
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001  (safetensors and torch raise their own types for bad files)
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConversionError(f"{path}: cannot read the weights ({type(e).__name__}: {reason}); "
                              "is the file complete? Copy it again") from None


def _read_weights(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        try:
            import safetensors.numpy
            return dict(safetensors.numpy.load_file(path))
        except ImportError:
            raise ConversionError("reading safetensors needs the `safetensors` package "
                                  "(pip install t5x_like[hf])") from None
        except (TypeError, ValueError):  # bfloat16 has no numpy dtype: go through torch
            from safetensors.torch import load_file
            return {k: _torch_to_numpy(v) for k, v in load_file(path).items()}
    try:
        import torch
    except ImportError:
        raise ConversionError(f"reading {os.path.basename(path)} needs torch (pip install t5x_like[hf])") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: _torch_to_numpy(v) for k, v in state.items()}


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    return tensor.detach().cpu().numpy()


def write_hf_dir(hf_dir: str, config: dict, tensors: dict[str, np.ndarray]) -> None:
    """config.json + model.safetensors (contiguous float32)."""
    try:
        import safetensors.numpy
    except ImportError:
        raise ConversionError("writing safetensors needs the `safetensors` package "
                              "(pip install t5x_like[hf])") from None
    os.makedirs(hf_dir, exist_ok=True)
    with open(os.path.join(hf_dir, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    safetensors.numpy.save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
                                os.path.join(hf_dir, SAFETENSORS_FILE), metadata={"format": "pt"})


def copy_tokenizer_files(source_dir: str, target_dir: str) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(source_dir, name)):
            os.makedirs(target_dir, exist_ok=True)
            shutil.copyfile(os.path.join(source_dir, name), os.path.join(target_dir, name))
            copied.append(name)
    return copied


def config_field(hf_config: dict, name: str, kind: type, default: Any = dataclasses.MISSING) -> Any:
    """hf_config[name], checked to be of `kind`; a clear error names the field."""
    if name not in hf_config or hf_config[name] is None:
        if default is dataclasses.MISSING:
            raise ConversionError(f"config.json: required field {name!r} is missing")
        return default
    value = hf_config[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConversionError(f"config.json: field {name!r} = {value!r} should be of type {kind.__name__}")
    return value


def activation_from_hf(name: str, field: str) -> str:
    if name not in ACTIVATIONS_FROM_HF:
        raise ConversionError(f"config.json: {field} = {name!r} is not supported; supported: "
                              f"{sorted(ACTIVATIONS_FROM_HF)}")
    return ACTIVATIONS_FROM_HF[name]


# --- tensors -------------------------------------------------------------------
def checked_tensor(tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...],
                   because: str = "") -> np.ndarray:
    """tensors[name] as float32, or a ConversionError naming the tensor and the shape it should have."""
    if name not in tensors:
        raise ConversionError(f"weights: tensor {name!r} is missing (expected shape {tuple(shape)})")
    value = tensors[name]
    if tuple(value.shape) != tuple(shape):
        why = f" from {because}" if because else ""
        raise ConversionError(f"weights: tensor {name!r} has shape {tuple(value.shape)}, "
                              f"expected {tuple(shape)}{why}")
    return np.asarray(value, np.float32)


class TensorSource:
    """Hands out HF tensors by name with shape checks, and reports any left unused."""

    def __init__(self, tensors: dict[str, np.ndarray], strip_prefix: str = ""):
        self._tensors = {(k[len(strip_prefix):] if strip_prefix and k.startswith(strip_prefix) else k): v
                         for k, v in tensors.items()}
        self._used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def take(self, name: str, shape: tuple[int, ...], because: str = "") -> np.ndarray:
        """The tensor `name` as float32; `because` names the config fields that fix its shape."""
        value = checked_tensor(self._tensors, name, shape, because)
        self._used.add(name)
        return value

    def ignore(self, name: str) -> None:
        self._used.add(name)

    def check_all_used(self) -> None:
        unused = sorted(set(self._tensors) - self._used)
        if unused:
            shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            raise ConversionError(f"weights: {len(unused)} tensor(s) have no place in the converted model "
                                  f"(an unsupported variant or a config.json that does not match): {shown}")


# --- our params tree -----------------------------------------------------------
def check_params(params: Params, config: TransformerConfig) -> None:
    """Raises ConversionError naming the first path whose presence or shape differs from init."""
    from flax import traverse_util
    want = traverse_util.flatten_dict(Model(config).abstract_params(), sep="/")
    have = traverse_util.flatten_dict(params, sep="/")
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        raise ConversionError(f"params: {missing[0]} is missing (expected shape {tuple(want[missing[0]].shape)})")
    if extra:
        raise ConversionError(f"params: {extra[0]} is not a parameter of this config")
    for path in sorted(want):
        if tuple(np.shape(have[path])) != tuple(want[path].shape):
            raise ConversionError(f"params: {path} has shape {tuple(np.shape(have[path]))}, "
                                  f"expected {tuple(want[path].shape)}")


def unscan_params(params: Params, config: TransformerConfig) -> Params:
    """Params with per-layer entries `{stack}_layers_{i}`, splitting scanned stacks (axis 0)."""
    if not config.scan_layers:
        return params
    import jax
    out = {k: v for k, v in params.items() if k not in ("encoder_layers", "decoder_layers")}
    for stack, depth in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
        if f"{stack}_layers" in params:
            for i in range(depth):
                out[f"{stack}_layers_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x)[i],
                                                          params[f"{stack}_layers"])
    return out


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter: our path, its HF tensor, and how one becomes the other.

    HF -> ours: transpose (if `transpose`), then reshape to `ours_shape`.
    Ours -> HF: the exact inverse. `because` names the config fields that fix the shape.
    """

    ours: str
    hf: str
    hf_shape: tuple[int, ...]
    ours_shape: tuple[int, ...]
    transpose: bool = False
    because: str = ""

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        return (x.T if self.transpose else x).reshape(self.ours_shape)

    def to_hf(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, np.float32)
        if self.transpose:
            return y.reshape(self.hf_shape[::-1]).T
        return y.reshape(self.hf_shape)


def params_from_table(table: list[Entry], source: TensorSource) -> Params:
    from flax import traverse_util
    flat = {e.ours: e.to_ours(source.take(e.hf, e.hf_shape, e.because)) for e in table}
    return traverse_util.unflatten_dict(flat, sep="/")


def tensors_from_table(table: list[Entry], params: Params) -> dict[str, np.ndarray]:
    from flax import traverse_util
    flat = traverse_util.flatten_dict(params, sep="/")
    return {e.hf: e.to_hf(flat[e.ours]) for e in table}


# --- MODEL_DIR -----------------------------------------------------------------
# Fields written to model.gin even when they equal the defaults, so the file
# still describes the same model if a default in config.py changes.
ALWAYS_WRITTEN = ("layout", "vocab_size", "d_model", "num_heads", "head_dim", "d_ff", "num_encoder_layers",
                  "num_decoder_layers", "mlp_activations", "norm", "norm_position", "norm_epsilon", "use_bias",
                  "position", "max_length", "relative_num_buckets", "relative_max_distance",
                  "scale_attention_by_head_dim", "tie_embeddings", "rescale_tied_logits")


def config_to_gin(config: TransformerConfig, header: str = "") -> str:
    default = TransformerConfig()
    lines = [f"# {line}" for line in header.splitlines()]
    lines += ["import t5x_like.cli.configurables", "",
              "MODEL = @models.Model()", "models.Model.config = @config.TransformerConfig()"]
    for field in dataclasses.fields(TransformerConfig):
        value = getattr(config, field.name)
        if field.name in ALWAYS_WRITTEN or value != getattr(default, field.name):
            lines.append(f"config.TransformerConfig.{field.name} = {value!r}")
    return "\n".join(lines) + "\n"


def save_model_dir(model_dir: str, config: TransformerConfig, params: Params, header: str = "") -> None:
    """Writes model_config.json, model.gin and a checkpoint of params only (step 0) under MODEL_DIR."""
    check_params(params, config)
    directory = os.path.join(os.path.abspath(model_dir), checkpoints.CHECKPOINT_SUBDIR)
    if os.path.exists(os.path.join(directory, str(CHECKPOINT_STEP))):
        raise ConversionError(f"{directory}/{CHECKPOINT_STEP} already exists; convert into an empty MODEL_DIR")
    checkpoints.write_model_config(model_dir, checkpoints.SavedModelConfig(  # default data settings: bytes
        config, written_by=header.splitlines()[0] if header else "t5x-like convert"))
    with open(os.path.join(model_dir, MODEL_GIN), "w") as f:
        f.write(config_to_gin(config, header))
    writer = checkpoints.Checkpointer(directory, keep=None, async_save=False)
    try:
        writer.save(CHECKPOINT_STEP, params, None, {"source": header.splitlines()[0] if header else "converted"})
    finally:
        writer.close()


def load_model_dir(model_dir: str, config: TransformerConfig | None = None) -> tuple[TransformerConfig, Params]:
    """(config, params) of a MODEL_DIR (a converted or a trained one): the config saved there
    unless given, params from its newest good checkpoint."""
    import jax

    if config is None:
        saved = checkpoints.read_model_config(model_dir)
        if saved is None:
            raise ConversionError(f"no {checkpoints.MODEL_CONFIG_FILE} in {model_dir!r} (written before it "
                                  "existed): pass the model's gin file (its model.gin or config.gin) with --gin_file")
        config = saved.model
    params = checkpoints.load_params(model_dir, Model(config).abstract_params()).params
    return config, jax.tree.map(np.asarray, params)
