"""`xsilo pki list --roster`: the members' key fingerprints as the line a site pins, and a
kit's own [identity] signs with exactly the key the roster names."""

from __future__ import annotations

import tomllib
from pathlib import Path

from typer.testing import CliRunner

from deploy.pki.certs import load_certificate, public_key_fingerprint
from deploy.pki.cli import pki_app
from silo_client.config import load_silo_config
from silo_client.identity import site_identity
from silo_client.policy import SitePolicy

from .conftest import enroll_silo, make_pki


def test_the_roster_line_names_every_valid_member_by_key(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    kits = {name: enroll_silo(pki, name, tmp_path / name) for name in ("hospital-a", "hospital-b")}
    enroll_silo(pki, "hospital-c", tmp_path / "hospital-c")
    pki.revoke("hospital-c")  # a revoked member is no member
    out = CliRunner(env={"COLUMNS": "40"}).invoke(
        pki_app, ["list", "--pki-dir", str(tmp_path / "pki"), "--roster"])
    assert out.exit_code == 0, out.output
    line = out.output.strip()
    assert "\n" not in line  # never wrapped, whatever the terminal width
    roster = tomllib.loads(line)["roster"]
    assert roster == {name: "sha256:" + public_key_fingerprint(
        load_certificate(kit.client_cert).public_key()) for name, kit in kits.items()}
    # the kit's site config carries the identity that signs with that very key
    for name, kit in kits.items():
        (kit.root / "silo.toml").write_text((kit.root / "silo.toml").read_text().replace(
            "# [data]", '[data]\ntrain = "t.csv"\n[data.schema]\nlabel = "y"\n'
                        'task = "regression"\nfeatures = { x = "float" }\n# ').replace(
            "# [model]", '[model]\nspec = "sklearn:Ridge"\n# '))
        identity = site_identity(load_silo_config(kit.root / "silo.toml"),
                                 SitePolicy(roster=roster))
        assert identity is not None and identity.name == name
        assert identity.roster == SitePolicy(roster=roster).roster
