"""README's command lines stay true: every ``flow-policy VERB ...`` (also ``python -m flow_policy_ros VERB``,
``ros2 run flow_policy_ros flow-policy VERB``, ``torchrun ... -m flow_policy_ros VERB``) names a verb
of ``flow_policy_ros.cli`` and only flags that verb's argparse defines; the ones in code blocks parse
completely (required arguments present, values of the right type). Files the commands name under
``config/`` and ``models/`` exist in the repository."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from flow_policy_ros.cli import VERBS

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()
_PREFIXES = ("flow-policy ", "python -m flow_policy_ros ", "python3 -m flow_policy_ros ", "torchrun ",
             "ros2 run flow_policy_ros flow-policy ")
#: Flags whose value is an input file that must be in a fresh clone when it names config/ or models/.
_INPUT_FLAGS = ("--config", "--joint-map", "--model", "--checkpoint")
_START = re.compile(r"(?:flow-policy|-m flow_policy_ros)\s+([a-z][a-z-]*)(.*)")


def _commands() -> list[tuple[str, bool]]:
    """(command text from the verb on, in a code block?) for each README command line."""
    found: list[tuple[str, bool]] = []
    in_block = False
    lines = README.replace("\\\n", " ").splitlines()
    for line in lines:
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            candidates = [line.split(" #")[0]] if line.lstrip().startswith(_PREFIXES) else []
        else:
            candidates = re.findall(r"`([^`]*flow-policy [^`]*)`", line)
        for text in candidates:
            match = _START.search(text)
            if match and (in_block or match.group(1) in VERBS):
                found.append((f"{match.group(1)}{match.group(2)}".split("&&")[0].split("|")[0].strip(), in_block))
    return found


COMMANDS = _commands()


def verb_parser(verb: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"flow-policy {verb}", exit_on_error=False)
    importlib.import_module(VERBS[verb][0]).configure_parser(parser)
    return parser


def test_readme_has_commands_for_every_verb():
    assert {c.split()[0] for c, in_block in COMMANDS if in_block} == set(VERBS)


@pytest.mark.parametrize(("command", "in_block"), COMMANDS, ids=[c for c, _ in COMMANDS])
def test_readme_command_matches_argparse(command, in_block):
    tokens = shlex.split(command.replace("[", " ").replace("]", " "))
    verb, arguments = tokens[0], tokens[1:]
    assert verb in VERBS, f"README uses unknown verb {verb!r}"
    parser = verb_parser(verb)
    options = {s for action in parser._actions for s in action.option_strings}
    flags = [t.split("=")[0] for t in arguments if t.startswith("--")]
    assert set(flags) <= options, f"`flow-policy {verb}` has no {sorted(set(flags) - options)}"
    if in_block and "…" not in command and "..." not in command:
        try:
            parser.parse_args(arguments)
        except (argparse.ArgumentError, SystemExit) as exc:
            pytest.fail(f"README command does not parse: flow-policy {command}: {exc}")
    for flag, value in zip(arguments, arguments[1:]):
        if in_block and flag in _INPUT_FLAGS and value.startswith(("config/", "models/")):
            assert (REPO_ROOT / value).exists(), f"README names {value}, which is not in the repository"
