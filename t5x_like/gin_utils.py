"""Command-line handling of gin in T5X's conventions.

`--gin_file=PATH` (repeatable) and `--gin.NAME=VALUE` (repeatable, applied after
the files) are split off the argument list; everything else is returned for the
subcommand's own flags. Errors are turned into one line that names the binding
or file at fault, before anything is compiled.
"""
from __future__ import annotations

import os
import re

import gin

# Directories searched for relative --gin_file paths, after the working directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def parse(files: list[str], bindings: list[str], finalize: bool = True) -> None:
    """Applies gin files then bindings; raises GinConfigError with one clear line."""
    gin.clear_config()
    for root in DEFAULT_SEARCH_PATHS:
        gin.add_config_file_search_path(root)
    resolved = [resolve_gin_file(f) for f in files]
    try:
        gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=finalize)
    except Exception as e:  # gin raises several types; all become one readable line
        raise GinConfigError(_one_line(e, resolved, bindings)) from e


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


@gin.configurable
def _macro_value(value=gin.REQUIRED):
    return value


def evaluate_macro(name: str):
    """The evaluated value of macro `name` (e.g. MODEL -> a models.Model instance)."""
    query_macro(name)  # one clear error if it is unset
    with gin.unlock_config():
        gin.parse_config(f"t5x_like.gin_utils._macro_value.value = %{name}")
    return _macro_value()
