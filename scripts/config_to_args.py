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

``--set`` overrides or adds a value (parsed as YAML, so ``--set st.waitk-lagging-train=[1,3]``
gives a list, and ``--set asr=null`` removes a section). A section must be one that the config
contains or one that scripts/mustc_pipeline.sh or scripts/demo.sh reads, and a key of the
``pipeline`` section must be one that scripts/mustc_pipeline.sh reads; the config file itself is
held to that too. Keys of the other sections are command options and may be new, but a key with
underscores (``st.max_update`` for ``max-update``) is rejected where its command expects hyphens:
in every known section, and in another section when the config has the hyphenated form.
"""

import argparse
import difflib
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

_MISSING = object()

# Sections that scripts/mustc_pipeline.sh (pipeline, prep, model, train, asr, st, eval) and
# scripts/demo.sh (corpus) read; a config may add others.
KNOWN_SECTIONS = ("corpus", "pipeline", "prep", "model", "train", "asr", "st", "eval")
# The keys of the pipeline section that scripts/mustc_pipeline.sh reads. The other sections hold
# command options, which may be new, so only their spelling is checked.
PIPELINE_SECTION = "pipeline"
PIPELINE_KEYS = ("asr_pretraining", "average_last", "eval_k", "proportions_utterances")
# The known sections that hold long options of a command.
OPTION_SECTIONS = tuple(section for section in KNOWN_SECTIONS if section != PIPELINE_SECTION)
# The one underscore option of fairseq-train 0.12.3 with this plugin's speech_to_text models,
# which torch.distributed launchers set.
UNDERSCORE_OPTIONS = ("local_rank",)


def close_match_hint(name: str, candidates: Sequence[str]) -> str:
    """Return " (did you mean X?)" for the closest candidate, or "" when none is close."""
    matches = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {matches[0]}?)" if matches else ""


def check_section(config: Dict, path: str, section: str, where: str) -> None:
    """Exit with an error naming the known sections unless ``section`` is one of them."""
    known = sorted(set(KNOWN_SECTIONS) | set(config))
    if section not in known:
        raise SystemExit(
            f"error: {where}: unknown section {section!r}{close_match_hint(section, known)}; "
            f"{path} and the pipeline scripts know the sections {', '.join(known)}"
        )


def check_pipeline_key(option: str, where: str) -> None:
    """Exit with an error unless ``option`` is a key that scripts/mustc_pipeline.sh reads."""
    if option not in PIPELINE_KEYS:
        raise SystemExit(
            f"error: {where}: unknown key {option!r} in section {PIPELINE_SECTION}"
            f"{close_match_hint(option, PIPELINE_KEYS)}; its keys are {', '.join(PIPELINE_KEYS)}"
        )


def check_option_spelling(config: Dict, section: str, option: str, where: str) -> None:
    """Exit with an error when ``option`` is spelled with underscores where its command expects hyphens.

    The option tables hold long options. The commands that read the known sections
    (fairseq-train, data_prep/prep_mustc_data.py, data_prep/make_demo_corpus.py and
    scripts/eval_simul.sh) spell every option with hyphens, so there an underscore is a typo that
    would fail only when the command starts, or go unnoticed beside the configured value. In
    another section the key is rejected only when the config has its hyphenated form.
    """
    hyphenated = option.replace("_", "-")
    if hyphenated == option or option in UNDERSCORE_OPTIONS:
        return
    configured = {
        name
        for name_section, table in config.items()
        if name_section != PIPELINE_SECTION and isinstance(table, dict)
        for name in table
    }
    if hyphenated in configured:
        reason = "the config spells this option with hyphens"
    elif section in OPTION_SECTIONS:
        reason = f"the command that reads section {section} spells its options with hyphens"
    else:
        return
    raise SystemExit(
        f"error: {where}: {section}.{option} is spelled with underscores, but {reason}; write {section}.{hyphenated}"
    )


def check_override(config: Dict, path: str, section: str, option: str, where: str) -> None:
    """Exit with an error when an override names an unknown section or pipeline key, or misspells an option."""
    check_section(config, path, section, where)
    if not option:
        return
    if section == PIPELINE_SECTION:
        check_pipeline_key(option, where)
    else:
        check_option_spelling(config, section, option, where)


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
    pipeline = config.get(PIPELINE_SECTION)
    if isinstance(pipeline, dict):
        for option in pipeline:
            check_pipeline_key(str(option), path)
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key:
            raise SystemExit(f"error: --set expects SECTION.KEY=VALUE or SECTION=VALUE, got {override!r}")
        value = yaml.safe_load(text) if text else None
        section, _, option = key.partition(".")
        check_override(config, path, section, option, f"--set {override}")
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
        for section in args.sections:
            check_section(config, args.config, section, f"args {section}")
        sys.stdout.write("".join(word + "\0" for word in option_words(config, args.config, args.sections)))
    else:
        section, _, option = args.key.partition(".")
        check_section(config, args.config, section, f"get {args.key}")
        if section == PIPELINE_SECTION and option:
            check_pipeline_key(option, f"get {args.key}")
        print(get_value(config, args.config, args.key, args.default))
    return 0


if __name__ == "__main__":
    sys.exit(main())
