"""The documentation's command lines stay true, in README.md and in every docs/*.md page.

- Every ``flow-policy VERB ...`` (also ``python -m flow_policy_ros VERB``, ``ros2 run flow_policy_ros
  flow-policy VERB``, ``torchrun ... -m flow_policy_ros VERB``, ``$P -m flow_policy_ros VERB``) names a
  verb of ``flow_policy_ros.cli`` and only flags that verb's argparse defines; the ones in code blocks
  parse completely (required arguments present, values of the right type) unless they are templates
  (``…``, ``$VAR``, ``{a|b}``). Files the commands name under ``config/`` and
  ``models/`` exist in the repository. README has a code-block command for every verb.
- In code blocks: ``make TARGET`` names a Makefile target; ``ros2 run flow_policy_ros EXE`` an
  executable of this package; ``ros2 launch flow_policy_ros FILE name:=value`` a launch file in
  ``launch/`` and arguments it declares; ``python scripts/X.py`` a script that exists.
- Every relative link (``[text](path#anchor)``) points at a file of the repository and, for a
  Markdown file, at one of its headings.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from flow_policy_ros.cli import VERBS
from flow_policy_ros.ros import launch_support

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
DOCS = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
_PREFIXES = ("flow-policy ", "python -m flow_policy_ros ", "python3 -m flow_policy_ros ", "torchrun ",
             "ros2 run flow_policy_ros flow-policy ", ".venv/bin/python -m flow_policy_ros ", "$P -m flow_policy_ros ")
#: A command with shell variables or {a|b} alternatives is a template: its flags are checked, it is not parsed.
_TEMPLATE = re.compile(r"\$\w|\$\{|\{[^}]*\|[^}]*\}")
#: Flags whose value is an input file that must be in a fresh clone when it names config/ or models/.
_INPUT_FLAGS = ("--config", "--joint-map", "--model", "--checkpoint")
_START = re.compile(r"(?:flow-policy|-m flow_policy_ros)\s+([a-z][a-z-]*)(.*)")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _name(doc: Path) -> str:
    return str(doc.relative_to(REPO_ROOT))


def _block_lines(doc: Path) -> list[tuple[str, bool]]:
    """(line, inside a ``` code block?) for each line of ``doc``, with backslash continuations joined."""
    lines, in_block = [], False
    for line in doc.read_text().replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        lines.append((line, in_block))
    return lines


def _commands(doc: Path) -> list[tuple[str, str, bool]]:
    """(doc name, command text from the verb on, in a code block?) for each flow-policy command line."""
    found = []
    for line, in_block in _block_lines(doc):
        if in_block:
            candidates = [line.split(" #")[0]] if line.lstrip().startswith(_PREFIXES) else []
        else:
            candidates = re.findall(r"`([^`]*flow-policy [^`]*)`", line)
        for text in candidates:
            match = _START.search(text)
            if match and (in_block or match.group(1) in VERBS):
                command = f"{match.group(1)}{match.group(2)}".split("&&")[0].split(" | ")[0].strip()
                found.append((_name(doc), command, in_block))
    return found


def _shell_commands(doc: Path, program: str) -> list[tuple[str, list[str]]]:
    """(doc name, tokens) of each code-block command that starts with ``program`` (also after ``&&``)."""
    found = []
    for line, in_block in _block_lines(doc):
        if not in_block:
            continue
        for part in line.split(" #")[0].split("&&"):
            if part.split()[:1] == [program]:
                found.append((_name(doc), shlex.split(part)))
    return found


COMMANDS = [c for doc in DOCS for c in _commands(doc)]
MAKE_COMMANDS = [c for doc in DOCS for c in _shell_commands(doc, "make")]
ROS2_COMMANDS = [c for doc in DOCS for c in _shell_commands(doc, "ros2")]
SCRIPT_COMMANDS = [c for program in ("python", "python3", ".venv/bin/python") for doc in DOCS
                   for c in _shell_commands(doc, program) if len(c[1]) > 1 and c[1][1].startswith("scripts/")]
LINKS = [(_name(doc), target) for doc in DOCS for target in _LINK.findall(doc.read_text())
         if not target.startswith(("http://", "https://", "mailto:"))]


def verb_parser(verb: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"flow-policy {verb}", exit_on_error=False)
    importlib.import_module(VERBS[verb][0]).configure_parser(parser)
    return parser


def test_readme_has_commands_for_every_verb():
    assert {c.split()[0] for doc, c, in_block in COMMANDS if in_block and doc == "README.md"} == set(VERBS)


def test_docs_have_commands():
    """The collection itself works: README and the docs/ pages contribute commands."""
    docs_with_commands = {doc for doc, _, _ in COMMANDS}
    assert "README.md" in docs_with_commands
    assert len(docs_with_commands) > 1, "no flow-policy command found in docs/*.md"


@pytest.mark.parametrize(("doc", "command", "in_block"), COMMANDS, ids=[f"{d}: {c}" for d, c, _ in COMMANDS])
def test_doc_command_matches_argparse(doc, command, in_block):
    tokens = shlex.split(command.replace("[", " ").replace("]", " "))
    verb, arguments = tokens[0], tokens[1:]
    assert verb in VERBS, f"{doc} uses unknown verb {verb!r}"
    parser = verb_parser(verb)
    options = {s for action in parser._actions for s in action.option_strings}
    flags = [t.split("=")[0] for t in arguments if t.startswith("--")]
    assert set(flags) <= options, f"{doc}: `flow-policy {verb}` has no {sorted(set(flags) - options)}"
    if in_block and "…" not in command and "..." not in command and not _TEMPLATE.search(command):
        try:
            parser.parse_args(arguments)
        except (argparse.ArgumentError, SystemExit) as exc:
            pytest.fail(f"{doc} command does not parse: flow-policy {command}: {exc}")
    for flag, value in zip(arguments, arguments[1:]):
        if in_block and flag in _INPUT_FLAGS and value.startswith(("config/", "models/")):
            assert (REPO_ROOT / value).exists(), f"{doc} names {value}, which is not in the repository"


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", (REPO_ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize(("doc", "tokens"), MAKE_COMMANDS, ids=[f"{d}: {' '.join(t)}" for d, t in MAKE_COMMANDS])
def test_doc_make_target_exists(doc, tokens):
    targets = [t for t in tokens[1:] if not t.startswith("-") and "=" not in t]
    assert set(targets) <= _makefile_targets(), f"{doc}: the Makefile has no target {sorted(set(targets) - _makefile_targets())}"


def _executables() -> set[str]:
    return set(re.findall(r'"([\w-]+)\s*=\s*flow_policy_ros[\w.]*:\w+"', (REPO_ROOT / "setup.py").read_text()))


def _launch_arguments(launch_file: Path) -> set[str]:
    """Arguments the launch file declares: literal DeclareLaunchArgument names and launch_support's tables it uses."""
    source = launch_file.read_text()
    names = set(re.findall(r'DeclareLaunchArgument\(\s*"(\w+)"', source))
    for table in ("POLICY_ARGUMENTS", "SIM_ARGUMENTS"):
        if table in source:
            names |= {argument.name for argument in getattr(launch_support, table)}
    if "POLICY_REMAPS" in source:
        names |= set(launch_support.POLICY_REMAPS)
    return names


@pytest.mark.parametrize(("doc", "tokens"), ROS2_COMMANDS, ids=[f"{d}: {' '.join(t)}" for d, t in ROS2_COMMANDS])
def test_doc_ros2_command_names_what_exists(doc, tokens):
    verb, rest = tokens[1], tokens[2:]
    if verb == "run" and rest[:1] == ["flow_policy_ros"]:
        assert rest[1] in _executables(), f"{doc}: flow_policy_ros has no executable {rest[1]!r}"
    elif verb == "launch" and rest[:1] == ["flow_policy_ros"]:
        launch_file = REPO_ROOT / "launch" / rest[1]
        assert launch_file.is_file(), f"{doc}: there is no launch/{rest[1]}"
        given = {t.split(":=")[0] for t in rest[2:] if ":=" in t}
        declared = _launch_arguments(launch_file)
        assert given <= declared, f"{doc}: launch/{rest[1]} declares no {sorted(given - declared)}"
    elif verb == "lifecycle" and rest[:1] == ["set"]:
        assert rest[2] in {"configure", "activate", "deactivate", "cleanup", "shutdown"}, f"{doc}: no transition {rest[2]!r}"


@pytest.mark.parametrize(("doc", "tokens"), SCRIPT_COMMANDS, ids=[f"{d}: {' '.join(t)}" for d, t in SCRIPT_COMMANDS])
def test_doc_script_exists(doc, tokens):
    assert (REPO_ROOT / tokens[1]).is_file(), f"{doc} runs {tokens[1]}, which is not in the repository"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize(("doc", "target"), LINKS, ids=[f"{d}: {t}" for d, t in LINKS])
def test_doc_link_resolves(doc, target):
    path, _, anchor = target.partition("#")
    file = (REPO_ROOT / doc).parent / path if path else REPO_ROOT / doc
    assert file.exists(), f"{doc} links to {target}, which does not exist"
    if anchor and file.suffix == ".md":
        headings = {_anchor(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), re.M)}
        assert anchor in headings, f"{doc} links to {target}: {file.name} has no heading with anchor #{anchor}"
