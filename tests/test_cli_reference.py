"""docs/cli.md is the CLI's own account of every command and option (federation/cli_reference.py)."""

from __future__ import annotations

import re

from federation.cli_reference import PAGE, reference


def test_the_committed_cli_reference_is_what_the_cli_says() -> None:
    assert PAGE.read_text(encoding="utf-8") == reference(), (
        f"{PAGE} is stale: a command or option changed; run `make cli-docs` and commit it")


def test_the_reference_lists_every_command_with_its_options() -> None:
    page = reference()
    for command in ("coordinator run", "silo ledger show", "pki issue-coordinator",
                    "strategies list"):
        assert re.search(rf"^#+ `xsilo {command}`$", page, re.MULTILINE), command
    # options that the task-oriented docs never show are here, with their help text
    for option in ("--warn-days", "--local-epochs", "--common-name"):
        assert re.search(rf"\* `{option}[ `]", page), option
