"""What xsilo writes into Flower's ``key="value"`` settings (``--node-config``,
``--run-config``, the CLI's ``config.toml``): a value Flower would cut short at a quote or
read as TOML escapes is refused, never passed on to add settings of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.launch.processes import FlowerCLI, quoted
from xsilo.errors import ConfigError


def test_a_plain_value_is_quoted_as_flower_reads_it() -> None:
    assert quoted(Path("/srv/my kit/silo.toml"), "x") == '"/srv/my kit/silo.toml"'


@pytest.mark.parametrize("value", [
    '/srv/site a" partition-id=7 x="/silo.toml',  # ends the value, adds partition-id
    "/srv/kits\\u0041/silo.toml",  # a TOML escape: another path than the one named
    "/srv/x\nsilo-config=/etc",
])
def test_a_value_flower_cannot_carry_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="the silo config path .* rename it"):
        quoted(value, "the silo config path")
    with pytest.raises(ConfigError, match="the CA certificate path"):
        FlowerCLI(tmp_path / "flwr", address="127.0.0.1:9093", root_cert=Path(value))
    assert not (tmp_path / "flwr" / "config.toml").exists()
