"""silo.toml parsing: relative paths, unknown keys, missing sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from silo_client.config import load_silo_config, write_silo_config
from federation.demo_data import demo_schema
from xsilo.errors import ConfigError


def _write(tmp_path: Path, **kw) -> Path:
    args = dict(name="h", train=Path("data/train.csv"), schema=demo_schema(),
                model="sklearn:LogisticRegression")
    args.update(kw)
    return write_silo_config(tmp_path / "silo.toml", **args)


def test_paths_resolve_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load_silo_config(_write(tmp_path, test=Path("data/test.csv"), auth_key=Path("node.key")))
    assert cfg.train == tmp_path / "data" / "train.csv"
    assert cfg.test == tmp_path / "data" / "test.csv"
    assert cfg.auth_key == tmp_path / "node.key"
    assert cfg.workspace == tmp_path / "workspace"
    assert cfg.schema.label == "label" and cfg.schema.n_features == 30


@pytest.mark.parametrize("text, needle", [
    ('[silo]\nname="h"\n[data]\ntrain="t.csv"\n[model]\nspec="x"\n', "[data] needs `schema`"),
    ('[silo]\nname="h"\n[bogus]\nx=1\n', "unknown section [bogus]"),
    ('[silo]\nname="h"\nport=3\n', "unknown key(s) port in [silo]"),
    ('[silo]\n[data]\n', "[silo] needs `name`"),
    ('[silo\n', "is not valid TOML"),
    ('[silo]\nname=5\n', "[silo] name = 5 must be text"),
    ('[silo]\nname="b\\n[Service]\\nExecStartPre=+/bin/sh"\n', "must be text of 1 to 63 printable"),
    ('[silo]\nname="../x"\n', "without '/'"),
    ('[silo]\nname="clinic\\u00a0north"\n', "printable characters"),  # the coordinator's rule
])
def test_bad_silo_config_is_named(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "silo.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_silo_config(tmp_path / "silo.toml")
    assert needle in str(err.value)


def test_missing_file_says_which_command_to_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="xsilo silo start --config"):
        load_silo_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("key, where", [
    ("gateway", "`coordinator` in [gateway] of the member kit's kit.toml"),
    ("client_cert", "`client_certificate` in [gateway] of the member kit's kit.toml"),
    ("client_key", "`client_key` in [gateway] of the member kit's kit.toml"),
])
def test_gateway_settings_in_silo_toml_are_refused_not_ignored(tmp_path: Path, key: str,
                                                               where: str) -> None:
    path = _write(tmp_path)
    path.write_text(path.read_text().replace('[silo]\n', f'[silo]\n{key} = "x"\n', 1))
    with pytest.raises(ConfigError) as err:
        load_silo_config(path)
    assert f"[silo] {key} is not a silo.toml setting" in str(err.value)
    assert where in str(err.value) and "xsilo silo start --kit" in str(err.value)
