"""Reading `--config=path.py[:arg]` and its `--config.a.b=value` overrides, with one-line errors.

ml_collections reports a broken config file as a traceback (or defers it until the value is first read),
and a bad override as a raw repr ('\\'batchsize\\'\\nDid you mean...'). Everything here runs before flag
parsing, on the command line as typed, so each mistake is reported as a sentence naming the file and
line, or the full field path and what the field accepts.
"""
import difflib
import importlib.util
import os
import traceback

import ml_collections

from jaxdist.errors import ConfigError


def check(argv: list[str], flag: str = "config") -> ml_collections.ConfigDict | None:
    """Loads the config file named by --`flag` and checks that each --`flag`.x.y=v override names a field.
    Returns the config as the file gives it (None without the flag: absl reports that); raises ConfigError.
    ml_collections parses the override values afterwards: `explain` rewords its errors."""
    path = config_arg(argv, flag)
    if path is None:
        return None
    config = load(path)
    for arg in argv:
        if arg.startswith(f"--{flag}."):
            check_field(config, arg.split("=", 1)[0].removeprefix(f"--{flag}."))
    return config


def config_arg(argv: list[str], flag: str = "config") -> str | None:
    """The last --flag=VALUE or --flag VALUE, as absl reads it."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{flag}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{flag}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def load(path_and_arg: str) -> ml_collections.ConfigDict:
    """`get_config([arg])` of the file, as ml_collections calls it; ConfigError for any way it can fail."""
    path, *arg = path_and_arg.split(":", 1)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass one of configs/*.py, "
                          "e.g. --config=configs/digits_dp.py")
    spec = importlib.util.spec_from_file_location("jaxdist_config_check", path)
    if spec is None:
        raise ConfigError(f"config file {path} is not a Python file (.py) with a get_config() function")
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path}, line {e.lineno}: syntax error ({e.msg})") from None
    except Exception as e:  # whatever the file's own code raises while importing
        raise ConfigError(f"config file {path}{_line_in(path, e)}: {type(e).__name__}: {e}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path} defines no get_config() function; see configs/digits_dp.py")
    try:
        config = get_config(*arg)
    except Exception as e:
        raise ConfigError(f"config file {path}{_line_in(path, e)}: get_config({', '.join(map(repr, arg))}) raised "
                          f"{type(e).__name__}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path}: get_config() returned {type(config).__name__}, not an "
                          "ml_collections.ConfigDict; start from jaxdist.config.base_config()")
    return config


def _line_in(path: str, error: Exception) -> str:
    """', line N' of the innermost traceback frame in the config file itself."""
    here = os.path.realpath(path)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.realpath(f.filename) == here]
    return f", line {frames[-1].lineno}" if frames else ""


def check_field(config, dotted: str) -> None:
    """ConfigError naming the full path and the closest valid names if `dotted` is not a field."""
    node, walked = config, []
    for name in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            where = ".".join(walked)
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(f"unknown config field {dotted!r}: {where} is a value, not a group of fields")
            close = difflib.get_close_matches(name, list(node.keys()), n=3)
            hint = f"did you mean {' or '.join(repr('.'.join([*walked, c])) for c in close)}?" if close else \
                f"valid fields{' of ' + where if where else ''}: {', '.join(sorted(node.keys()))}"
            raise ConfigError(f"unknown config field {dotted!r}; {hint}")
        node, walked = node[name], [*walked, name]


def explain(message: str, config=None) -> str:
    """absl's 'flag --config.a.b=v: <parser error>' as a sentence naming what field a.b accepts."""
    head, _, _ = message.partition(": ")
    if not head.startswith("flag --config.") or "=" not in head:
        return message
    dotted, value = head.removeprefix("flag --config.").split("=", 1)
    current = _get(config, dotted) if config is not None else None
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            tuple: "a tuple, e.g. (1, 2) quoted for the shell", list: "a list, e.g. [1, 2]"}.get(type(current))
    if isinstance(current, ml_collections.ConfigDict):
        return (f"--config.{dotted}={value} is not valid: {dotted} is a group of fields; set them one by one, "
                f"e.g. --config.{dotted}.{next(iter(current.keys()))}=...")
    if kind is None:
        return message.removeprefix("flag ")
    return f"--config.{dotted}={value} is not valid: {dotted} takes {kind} (the config has {current!r})"


def _get(config, dotted: str):
    for name in dotted.split("."):
        if not isinstance(config, ml_collections.ConfigDict) or name not in config:
            return None
        config = config[name]
    return config

