#!/usr/bin/env python
"""Read a pipeline config (plain YAML) and print command-line words or single values.

A config maps section names to option tables. In an option table each key is a command's long
option without the leading ``--``: ``true`` passes the bare flag, ``false`` or null leaves the
option out, a list is joined with commas (fairseq's list options, such as
``--waitk-lagging-train 1,3,5``), any other value is passed as one word.

    config_to_args.py args CONFIG SECTION [SECTION ...] [--set SECTION.KEY=VALUE ...]
        prints the options of the sections, later sections overriding earlier ones, as
        NUL-separated words (read them in bash with ``mapfile -d ''``)
    config_to_args.py get CONFIG SECTION.KEY [--default VALUE] [--set ...]
        prints one value; a list is printed space-separated

``--set`` overrides or adds a value (parsed as YAML, so ``--set eval.k=[1,3]`` gives a list, and
``--set asr=null`` removes a section).
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

_MISSING = object()


def load_config(path: str, overrides: Sequence[str] = ()) -> Dict:
    """Load ``path`` and apply ``SECTION.KEY=VALUE`` overrides."""
    config_path = Path(path)
    if not config_path.is_file():
        raise SystemExit(f"error: config file not found: {path}")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise SystemExit(f"error: {path} is not valid YAML: {error}")
    if not isinstance(config, dict):
        raise SystemExit(f"error: {path} must map section names to option tables")
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key:
            raise SystemExit(f"error: --set expects SECTION.KEY=VALUE or SECTION=VALUE, got {override!r}")
        value = yaml.safe_load(text) if text else None
        section, _, option = key.partition(".")
        if not option:
            config[section] = value
            continue
        table = config.get(section)
        if table is None:
            table = config[section] = {}
        if not isinstance(table, dict):
            raise SystemExit(f"error: --set {override}: section {section!r} of {path} is not an option table")
        table[option] = value
    return config


def section_options(config: Dict, path: str, section: str) -> Dict:
    table = config.get(section)
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise SystemExit(f"error: section {section!r} of {path} must map option names to values, got {table!r}")
    return table


def format_value(value, where: str) -> str:
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (list, dict)):
                raise SystemExit(f"error: {where}: lists may hold only plain values, got {value!r}")
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        raise SystemExit(f"error: {where}: expected a plain value or a list, got a table")
    return str(value)


def option_words(config: Dict, path: str, sections: Sequence[str]) -> List[str]:
    """Merge the sections in order and return their options as command-line words."""
    merged: Dict = {}
    for section in sections:
        merged.update(section_options(config, path, section))
    words = []
    for name, value in merged.items():
        if value is None or value is False:
            continue
        words.append(f"--{name}")
        if value is not True:
            words.append(format_value(value, f"{path}: {name}"))
    return words


def get_value(config: Dict, path: str, key: str, default=_MISSING) -> str:
    section, _, option = key.partition(".")
    table = config.get(section)
    if option:
        value = table.get(option, _MISSING) if isinstance(table, dict) else _MISSING
    else:
        value = table if section in config else _MISSING
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise SystemExit(f"error: {path} has no value for {key}; add it to the config or pass --set {key}=VALUE")
        return default
    if isinstance(value, (list, tuple)):
        return " ".join(str(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        raise SystemExit(f"error: {path}: {key} is a table, not a value")
    return str(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    args_parser = commands.add_parser("args", help="print the options of sections as NUL-separated words")
    args_parser.add_argument("config")
    args_parser.add_argument("sections", nargs="+")
    get_parser = commands.add_parser("get", help="print one value")
    get_parser.add_argument("config")
    get_parser.add_argument("key", help="SECTION.KEY, or SECTION for a plain top-level value")
    get_parser.add_argument("--default", default=_MISSING, help="value to print when the key is missing or null")
    for sub in (args_parser, get_parser):
        sub.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override a config value (YAML syntax); repeatable")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.set)
    if args.command == "args":
        sys.stdout.write("".join(word + "\0" for word in option_words(config, args.config, args.sections)))
    else:
        print(get_value(config, args.config, args.key, args.default))
    return 0


if __name__ == "__main__":
    sys.exit(main())
