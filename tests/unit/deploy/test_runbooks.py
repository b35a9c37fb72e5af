"""docs/runbooks against the code: every ``steward ...`` command a runbook tells on-call to run exists in the
CLI (with the options it uses), and alerts.md maps exactly the PrometheusRule's alerts to their pages."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from services.cli.main import cli
from tests.plugins.k8s import K8S, ROOT

RUNBOOKS = ROOT / "docs" / "runbooks"
# Commands other work in progress adds (issue 13 §5: the on-call CLI). Drop an entry once it exists: the
# last test fails when a pending command is there already.
PENDING: set[tuple[str, ...]] = set()
# "steward" starting a command: not a namespace (-n steward, namespace steward) or part of a longer word.
COMMAND = re.compile(r"(?<![\w./=:-])(?<!-n )(?<!namespace )steward((?: +(?:--?[a-z][a-z-]*|[a-z][a-z-]*))+)")


def _commands(text: str) -> list[list[str]]:
    return [match.group(1).split() for match in COMMAND.finditer(text)]


def _resolve(words: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """(the command, the words naming it, the option names used after it)."""
    command: click.Command = cli
    path: list[str] = []
    options: list[str] = []
    for word in words:
        if word.startswith("-"):
            options.append(word)
        elif isinstance(command, click.Group) and not options:
            sub = command.get_command(click.Context(command), word)
            if sub is None:
                raise LookupError(" ".join([*path, word]))
            command = sub
            path.append(word)
        else:
            break  # an argument or prose
    return command, path, options


def _runbook_commands() -> list[tuple[str, list[str]]]:
    return [(page.name, words) for page in sorted(RUNBOOKS.glob("*.md")) for words in _commands(page.read_text())]


def _pending(path: list[str], options: list[str]) -> bool:
    return tuple(path[:2]) in PENDING or tuple(path[:1]) in PENDING or any((*path, o) in PENDING for o in options)


@pytest.mark.parametrize(("page", "words"), _runbook_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_runbook_commands_exist(page: str, words: list[str]) -> None:
    try:
        command, path, options = _resolve(words)
    except LookupError as missing:
        assert (str(missing).split()[0],) in PENDING or tuple(str(missing).split()) in PENDING, (
            f"{page}: `steward {' '.join(words)}`: no command `{missing}`"
        )
        return
    if _pending(path, options):
        return
    known = {name for param in command.params for name in param.opts} | {"--help", "-h"}
    for option in options:
        assert option in known, f"{page}: `steward {' '.join(words)}`: {' '.join(path)} has no option {option}"


def test_the_parser_finds_commands_and_skips_namespaces() -> None:
    found = _commands("run `steward keys rotate --all-tenants`; kubectl -n steward get pods; part-of=steward x")
    assert found == [["keys", "rotate", "--all-tenants"]]


def _alerts() -> dict[str, str]:
    rules = yaml.safe_load_all((K8S / "components" / "observability" / "prometheusrule.yaml").read_text())
    (rule,) = [doc for doc in rules if doc and doc.get("kind") == "PrometheusRule"]
    return {
        r["alert"]: Path(r["annotations"]["runbook_url"]).name
        for group in rule["spec"]["groups"]
        for r in group["rules"]
        if "alert" in r
    }


def test_alerts_page_maps_every_alert_to_its_runbook() -> None:
    rows = re.findall(
        r"^\| `(Steward\w+)` \| \w+ \| \[([a-z0-9-]+\.md)\]\(\2\) \|", (RUNBOOKS / "alerts.md").read_text(), re.M
    )
    assert dict(rows) == _alerts()
    for page in dict(rows).values():
        assert (RUNBOOKS / page).is_file(), page


def test_pending_commands_do_not_exist_yet() -> None:
    for entry in PENDING:
        words = [w for w in entry if not w.startswith("-")]
        try:
            command, path, _ = _resolve(words)
        except LookupError:
            continue
        flags = [w for w in entry if w.startswith("-")]
        known = {name for param in command.params for name in param.opts}
        assert path != words or (flags and not set(flags) <= known), (
            f"`steward {' '.join(entry)}` exists: drop it from PENDING"
        )
