"""Gin on the command line, in T5X's conventions, and the loaders built on it.

`--gin_file=PATH` (repeatable) and `--gin.NAME=VALUE` (repeatable, applied after
the files) are split off the argument list; everything else is returned for the
subcommand's own flags. Errors are turned into one line that names the binding
or file at fault, before anything is compiled.

`load_config` replaces the process's global gin config (every command parses
its own files); the loaders on top of it turn gin files into the library's
plain objects:
  model_config_from_file   a model gin file -> TransformerConfig  (`t5x-like size`, compare)
  train_config_from_args   `t5x-like train` arguments -> TrainConfig (train, compile, compare cells)
  load_saved_model         MODEL_DIR's saved config + gin overrides -> Model + task lengths
                           (eval, analyze-attention; without overrides they read
                           model_config.json directly: inference.evaluation.load_checkpoint)
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import tempfile

import gin

from t5x_like.cli import configurables
from t5x_like.inference import evaluation
from t5x_like.interop.common import config_to_gin
from t5x_like.model.config import TransformerConfig
from t5x_like.model.model import Model
from t5x_like.training import checkpoints
from t5x_like.training.run import ConfigFieldError, TrainConfig

# Directories searched for relative --gin_file paths, after the working directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIRED_TRAIN_MACROS = ("MODEL", "MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS")
SAVED_CONFIG_FILES = ("config.gin", "operative_config.gin")  # written by `t5x-like train`
CONVERTED_MODEL_GIN = "model.gin"  # `t5x-like convert` writes it; the only config of older converted dirs
DEFAULT_SEARCH_PATHS = (os.getcwd(), REPO_ROOT)


class GinConfigError(ValueError):
    """A gin file or binding that cannot be applied; the message says which."""


def split_gin_args(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Returns (gin_files, gin_bindings, other_args) from a raw argument list."""
    files, bindings, rest = [], [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg == "--gin_file" and args:
            files.append(args.pop(0))
        elif arg.startswith("--gin."):
            name, sep, value = arg[len("--gin."):].partition("=")
            if not sep:
                raise GinConfigError(f"--gin.{name} needs a value: --gin.{name}=VALUE")
            bindings.append(f"{name} = {_as_gin_literal(value)}")
        elif arg.startswith("--gin_bindings="):
            bindings.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return files, bindings, rest


def _as_gin_literal(value: str) -> str:
    """Lets users write --gin.MODEL_DIR=/tmp/x without T5X's nested quoting."""
    try:
        gin.config_parser.ConfigParser(f"X = {value}", gin.config.ParserDelegate(skip_unknown=True)).parse_statement()
        return value
    except Exception:  # not a gin literal or reference: treat it as a string
        return repr(value)


def resolve_gin_file(path: str) -> str:
    if os.path.isabs(path) and os.path.exists(path):
        return path
    for root in DEFAULT_SEARCH_PATHS:
        candidate = os.path.join(root, path)
        if os.path.exists(candidate):
            return candidate
    raise GinConfigError(
        f"gin file {path!r} not found (looked in {', '.join(DEFAULT_SEARCH_PATHS)}); "
        "pass a path relative to the repository root, e.g. "
        "--gin_file=gin_configs/models/decoder_only/tiny.gin")


class _QuietPackageProbes(logging.Filter):
    """Drops gin's 'Path not found' ERROR lines: it logs one for every search path an include
    is not under (before finding it under another), which reads like a failure and is not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.pathname.endswith("resource_reader.py") and record.msg == "Path not found: %s")


def load_config(files: list[str], bindings: list[str], finalize: bool = True) -> None:
    """Replaces the global gin config by `files` then `bindings`, and hands the data
    settings to the data package; raises GinConfigError with one clear line."""
    gin.clear_config()
    root_logger = logging.getLogger()
    if not any(isinstance(f, _QuietPackageProbes) for f in root_logger.filters):
        root_logger.addFilter(_QuietPackageProbes())
    for root in DEFAULT_SEARCH_PATHS:
        gin.add_config_file_search_path(root)
    resolved = [resolve_gin_file(f) for f in files]
    try:
        gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=finalize)
    except Exception as e:  # gin raises several types; all become one readable line
        if "gin.macro" in str(e):  # a macro left unset: a misspelt --gin.MACRO is the likely cause
            check_macros_are_used(bindings)
        raise GinConfigError(_one_line(e, resolved, bindings)) from e
    check_macros_are_used(bindings)
    try:
        configurables.apply_data_settings()
    except (ValueError, TypeError, FileNotFoundError) as e:  # gin appends "In call to configurable ..."
        message = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)  # (a `!r` here quoted every message)
        raise GinConfigError(f"gin config error: {message}") from e


_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_]\w*)\s*=")


def check_macros_are_used(bindings: list[str]) -> None:
    """GinConfigError for a binding of a macro that no parsed file uses (a typo such as
    LEARNING_RAT=... would otherwise be ignored), naming the close matches.

    Bindings of configurable parameters (`Name.param = ...`) are gin's to check."""
    text = gin.config_str()
    known = sorted(set(re.findall(r"^([A-Za-z_]\w*) = ", text, re.M)) | set(re.findall(r"%([A-Za-z_]\w*)", text)))
    for binding in bindings:
        match = _MACRO_BINDING.match(binding)
        if match and not re.search(rf"%{match.group(1)}\b", text):
            name = match.group(1)
            close = difflib.get_close_matches(name, [k for k in known if k != name], n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise GinConfigError(f"gin macro {name} is set (--gin.{name}=...) but no gin file uses it{hint}")


def _one_line(error: Exception, files: list[str], bindings: list[str]) -> str:
    message = str(error).strip().splitlines()
    first = message[0] if message else type(error).__name__
    where = [line.strip() for line in message[1:] if re.search(r"(line \d+|In file|In bindings)", line)]
    hint = f" ({'; '.join(where)})" if where else ""
    return f"gin config error: {first}{hint}. Files: {files or '-'}; bindings: {bindings or '-'}"


def query_macro(name: str, required: bool = True, default=None):
    """Value of a gin macro, with a clear error naming the flag when it is missing."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        if required:
            raise GinConfigError(
                f"required gin macro {name} is not set; add --gin.{name}=VALUE "
                "or bind it in a gin file") from None
        return default


def evaluate_macro(name: str):
    """The evaluated value of macro `name` (e.g. MODEL -> a Model instance)."""
    query_macro(name)  # one clear error if it is unset
    with gin.unlock_config():
        gin.parse_config(f"t5x_like.cli._macro_value.value = %{name}")
    return configurables._macro_value()


# --- loaders: gin files -> the library's plain objects ----------------------------------
def model_config_from_file(gin_file: str | list[str], bindings: list[str]) -> TransformerConfig:
    """The TransformerConfig that a model gin file (with any other files) binds to MODEL; a config
    it refuses (num_kv_heads=3 with 4 heads) is a GinConfigError of one line."""
    load_config([gin_file] if isinstance(gin_file, str) else list(gin_file), bindings, finalize=False)
    try:
        return evaluate_macro("MODEL").config
    except (ValueError, TypeError) as e:  # gin appends "In call to configurable ..."
        raise GinConfigError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e


def train_config_from_args(argv: list[str], defaults: dict[str, str] | None = None
                           ) -> tuple[TrainConfig, str, list[str]]:
    """(TrainConfig, run mode, remaining arguments) of a `t5x-like train` command line.

    Checks that the required macros are bound; `defaults` (macro -> gin literal) binds
    those that no file or flag binds (`t5x-like compile` needs no MODEL_DIR, for one).
    The TrainConfig carries the parsed config as text (`config_text`), which the run
    saves as MODEL_DIR/config.gin. A count of the wrong type or out of range (TRAIN_STEPS='ten',
    BATCH_SIZE=0) is a GinConfigError naming the binding that set it.
    """
    files, bindings, rest = split_gin_args(argv)
    load_config(files, bindings, finalize=not defaults)
    if defaults:
        unbound = [f"{name} = {value}" for name, value in defaults.items()
                   if query_macro(name, required=False) is None]
        try:
            gin.parse_config(unbound)
            gin.finalize()
        except Exception as e:  # as in load_config: one line naming the binding at fault
            raise GinConfigError(_one_line(e, files, bindings)) from e
    for name in REQUIRED_TRAIN_MACROS:
        query_macro(name)
    try:
        config = configurables.configured_train_config()
        mode = configurables.run_mode()
    except (ValueError, TypeError) as e:
        raise GinConfigError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
    config.config_text = gin.config_str()
    try:
        config.check_fields()
    except ConfigFieldError as e:
        raise GinConfigError(_naming_the_binding(e, config.config_text)) from None
    return config, mode, rest


def _naming_the_binding(error: ConfigFieldError, config_text: str) -> str:
    """The error with the gin binding that set the field in front: the macro (`--gin.TRAIN_STEPS: ...`)
    when a file binds the field to one, else the field's own binding."""
    macro = re.search(rf"^TrainConfig\.{error.field} = %([A-Za-z_]\w*)\s*$", config_text, re.M)
    binding = macro.group(1) if macro else f"TrainConfig.{error.field}"
    return f"--gin.{binding}: {error}"


def load_saved_model(model_dir: str, gin_files=(), gin_bindings=()) -> tuple[Model, dict[str, int]]:
    """The Model (and training task lengths) saved in MODEL_DIR, with extra gin files/bindings on
    top: its model_config.json rendered as gin bindings, or, for a run older than that file,
    its config.gin (a converted model's model.gin)."""
    saved = checkpoints.read_model_config(model_dir)
    legacy = [os.path.join(model_dir, name) for name in (*SAVED_CONFIG_FILES, CONVERTED_MODEL_GIN)
              if os.path.exists(os.path.join(model_dir, name))]
    if saved is None and not legacy and not gin_files:
        raise evaluation.CheckpointError(
            f"no model config in {model_dir!r}: expected {checkpoints.MODEL_CONFIG_FILE} (written by "
            "`t5x-like train` and `t5x-like convert`), or pass the model's gin file with --gin_file")
    with tempfile.TemporaryDirectory() as tmp:
        if saved is not None:
            files = [os.path.join(tmp, "model_config.gin")]
            with open(files[0], "w") as f:
                f.write(saved_config_as_gin(saved))
        else:
            files = [_without_legacy_imports(legacy[0], tmp)] if legacy else []
        load_config(files + list(gin_files), list(gin_bindings), finalize=False)
    model = configurables.configured_model()  # gin supplies the config bound in the files
    lengths = query_macro("TASK_FEATURE_LENGTHS", required=False, default={}) or {}
    return model, dict(lengths)


def saved_config_as_gin(saved: checkpoints.SavedModelConfig) -> str:
    """A MODEL_DIR's model_config.json as gin bindings (MODEL, TASK_FEATURE_LENGTHS, the data
    settings), for commands that let gin files and bindings override it."""
    lines = [config_to_gin(saved.model).rstrip("\n")]  # the model part: what a converted model.gin holds
    lines.append(f"TASK_FEATURE_LENGTHS = {dict(saved.task_feature_lengths)!r}")
    data = saved.data
    bindings = {"tfds_data_dir.data_dir": data.tfds_data_dir, "ul2_mixing_rates.rates": data.ul2_mixing_rates,
                "mlm_rate.rate": data.mlm_rate, "vocabulary.sentencepiece_model": data.sentencepiece_model,
                "vocabulary.extra_ids": data.extra_ids}
    lines += [f"t5x_like.data.tasks.{name} = {value!r}" for name, value in bindings.items() if value is not None]
    return "\n".join(lines) + "\n"


# Modules that config.gin files saved before the layered packages import; the
# registry (`import t5x_like.cli.configurables`) now provides all their names.
_LEGACY_IMPORT = re.compile(r"^import t5x_like\.(config|models|train|optimizers|partitioning|checkpoints|"
                            r"metrics_log|decoding|compare|gin_utils)\s*$", re.M)


def _without_legacy_imports(path: str, tmp_dir: str) -> str:
    """`path`, or a copy in tmp_dir whose imports of since-moved modules name the registry instead."""
    with open(path) as f:
        text = f.read()
    if not _LEGACY_IMPORT.search(text):
        return path
    copy = os.path.join(tmp_dir, os.path.basename(path))
    with open(copy, "w") as f:
        f.write(_LEGACY_IMPORT.sub("import t5x_like.cli.configurables", text))
    return copy


def load_checkpoint_with_overrides(path: str, gin_files=(), gin_bindings=()) -> evaluation.LoadedCheckpoint:
    """The checkpoint at `path` (MODEL_DIR, its checkpoints/ or a step folder) with the model saved
    in its MODEL_DIR; gin files/bindings, when given, override that model (load_saved_model)."""
    location = checkpoints.resolve_checkpoint(path)
    location.candidates()  # no step at all: say so before asking for a config
    if not gin_files and not gin_bindings and checkpoints.read_model_config(path) is not None:
        return evaluation.load_checkpoint(path)
    model, lengths = load_saved_model(location.run_dir, gin_files, gin_bindings)
    return evaluation.load_checkpoint(path, model, lengths)
