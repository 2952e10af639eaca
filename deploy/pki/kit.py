"""The member kit: one directory per silo that ``xsilo silo start`` uses as is.

Layout (paths in the TOML files are relative to the kit directory)::

    KIT/                      mode 0700
      kit.toml                [silo] + [gateway]: everything deploy needs (load_kit)
      silo.toml               starter site config: [silo] name, superlink, root_certificates,
                              auth_key (silo_client.config), [policy] file = "policy.toml";
                              written only if absent, the site adds its [data] and [model]
      policy.toml             site policy stub (silo_client.policy), every rule commented out
                              (the permissive default); written with silo.toml, if absent
      request.json            the enrollment request that was sent (public)
      silo.key      0600      TLS client key, generated here, never leaves the site
      silo.crt                client certificate signed by the consortium CA
      ca.crt                  consortium CA (fingerprint checked out of band)
      crl.pem                 CRL as of the last bundle (informational)
      node.key      0600      Flower node-auth key (OpenSSH ECDSA P-384)
      node.pub                its public key, registered on the SuperLink
      gateway/local-ca.crt    trust anchor the SuperNode uses (--root-certificates)
      gateway/local.crt       silo gateway's loopback certificate (SAN 127.0.0.1, localhost)
      gateway/local.key 0600
      gateway/run/            nginx prefix while the silo gateway runs (conf, logs, pid)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.gateway.conf import check_hostport
from deploy.pki.checks import check_hosts, check_name
from xsilo.errors import ConfigError, EnrollmentError
from xsilo.files import atomic_write, read_toml

__all__ = ["KIT_FILES", "POLICY_STUB", "MemberKit", "load_kit", "write_kit_toml",
           "write_silo_stub"]

KIT_FILES = {
    "config": "kit.toml",
    "site_config": "silo.toml",
    "site_policy": "policy.toml",
    "tls_key": "silo.key",
    "tls_cert": "silo.crt",
    "ca": "ca.crt",
    "crl": "crl.pem",
    "node_key": "node.key",
    "node_pub": "node.pub",
    "local_ca": "gateway/local-ca.crt",
    "local_cert": "gateway/local.crt",
    "local_key": "gateway/local.key",
}


@dataclass(frozen=True)
class MemberKit:
    """A complete member kit, every path absolute."""

    root: Path
    name: str
    superlink: str  # host:port the SuperNode dials (the local silo gateway)
    root_certificates: Path  # what the SuperNode trusts for that hop
    auth_key: Path  # --auth-supernode-private-key
    node_public_key: Path
    listen_port: int
    coordinator: str  # host:port of the coordinator gateway
    server_name: str  # name the coordinator certificate must carry
    coordinator_sha256: str
    ca_cert: Path
    client_cert: Path
    client_key: Path
    local_cert: Path
    local_key: Path

    @property
    def gateway_prefix(self) -> Path:
        """nginx prefix of this silo's gateway."""
        return self.root / "gateway" / "run"


def _q(value: str | int) -> str:
    return json.dumps(value)  # a JSON string/int is a valid TOML basic string/integer


def _silo_table(name: str, local_port: int) -> str:
    f = KIT_FILES
    return f"""[silo]
name = {_q(name)}
superlink = {_q(f"127.0.0.1:{local_port}")}   # the local silo gateway, not the coordinator
root_certificates = {_q(f["local_ca"])}
auth_key = {_q(f["node_key"])}
"""


# Every SitePolicy field, commented out: the file loads as the permissive default.
POLICY_STUB = """\
# Site policy (silo_client.policy): what this site's ethics board allows. silo.toml points
# here ([policy] file). Every rule is optional; with all of them commented out the silo
# accepts any run of up to 1000 silos (max_silos). A run or round that breaks a rule is
# refused before anything is sent, and the coordinator's round table shows the reason as
# PolicyRefusal[<rule>].

# require_secure_aggregation = true           # never send an update in the clear
# max_epsilon = 8.0                           # site-lifetime DP budget, summed over runs
# delta = 1e-5                                # the largest delta a run may use
# allowed_strategies = ["fedavg", "fedprox"]
# min_silos_per_round = 3                     # no update when fewer silos take part
# secagg_threshold_fraction = 0.67            # secure aggregation: threshold t > 0.67 · n
# max_rounds = 50
# max_local_epochs = 20          # the most local epochs a round may ask of this silo
# max_silos = 200                             # the largest federation joined (default 1000)
# allowed_coordinator_fingerprints = ["sha256:AB:CD:..."]   # verified out of band
# roster = { "hospital-b" = "sha256:AB:CD:..." }  # secure aggregation only with these members
# share_metrics = "aggregate"                 # metrics leave only inside secure sums
# weight_bucket = 50                          # example counts leave rounded up to this
# allow_unapproved_code = true                # UNSAFE: lets executor = "flower" start, which
#                                             # runs any app a run carries (docs/security.md)
# allowed_compression = ["none", "q8"]         # how clear updates may travel (none, q8, q4,
#                                             # topk, prune; docs/running.md)
"""


def write_silo_stub(kit: Path, *, name: str, local_port: int) -> Path | None:
    """Write a starter ``silo.toml`` (site config) unless one exists; return it if written.

    With it comes ``policy.toml`` (:data:`POLICY_STUB`, unless the site already has one),
    which the stub's ``[policy]`` table names.
    """
    path = Path(kit) / KIT_FILES["site_config"]
    if path.exists():
        return None
    policy = Path(kit) / KIT_FILES["site_policy"]
    if not policy.exists():
        atomic_write(policy, POLICY_STUB)
    text = ("# Site configuration (silo_client.config). The [silo] table comes from the member\n"
            "# kit; add this site's [data] and [model] sections below.\n\n"
            + _silo_table(name, local_port)
            + f'\n[policy]\nfile = {_q(KIT_FILES["site_policy"])}   # the site policy: '
            'edit it to restrict runs\n'
            + "\n[identity]   # signs this silo's secure-aggregation keys; checks its peers'\n"
            + f'certificate = {_q(KIT_FILES["tls_cert"])}\nkey = {_q(KIT_FILES["tls_key"])}\n'
            + f'ca = {_q(KIT_FILES["ca"])}\ncrl = {_q(KIT_FILES["crl"])}\n'
            + '\n# [data]\n# train = "data/train.csv"\n# test = "data/test.csv"\n'
            '\n# [model]\n# spec = "sklearn:LogisticRegression"\n')
    atomic_write(path, text)
    return path


def write_kit_toml(kit: Path, *, name: str, local_port: int, coordinator: str,
                   server_name: str, coordinator_sha256: str) -> Path:
    """Write ``kit.toml`` (atomically)."""
    f = KIT_FILES
    text = f"""# xsilo member kit, written by `xsilo silo import-bundle`; rewritten on import.
# Paths are relative to this file's directory.

{_silo_table(name, local_port)}
[gateway]
listen = {_q(f"127.0.0.1:{local_port}")}
coordinator = {_q(coordinator)}
server_name = {_q(server_name)}
coordinator_certificate_sha256 = {_q(coordinator_sha256)}
ca_certificate = {_q(f["ca"])}
client_certificate = {_q(f["tls_cert"])}
client_key = {_q(f["tls_key"])}
local_certificate = {_q(f["local_cert"])}
local_key = {_q(f["local_key"])}
node_public_key = {_q(f["node_pub"])}
"""
    path = Path(kit) / f["config"]
    atomic_write(path, text)
    return path


_FIX = "fix it, or re-run `xsilo silo import-bundle` (it rewrites kit.toml)"


def _port(value: str, where: str) -> int:
    """The port of a ``host:port`` value (checked whole first: a port of thousands of
    digits must not reach ``int``)."""
    return int(check_hostport(value, where).rsplit(":", 1)[1])


def _server_name(value: str) -> str:
    """The name the coordinator certificate must carry (TLS SNI, nginx's ``proxy_ssl_name``):
    a DNS name or IP address as :func:`~deploy.pki.checks.check_hosts` takes it, without an
    IPv6 zone (``%eth0``: no certificate names one, and it may hold any character)."""
    if not isinstance(value, str) or "%" in value:
        raise ConfigError(f"gateway.server_name = {value!r} is not a DNS name")
    try:
        return check_hosts([value])[0]
    except EnrollmentError:
        raise ConfigError(f"gateway.server_name = {value!r} is not a DNS name: use letters, "
                          "digits, '-' and '.' (e.g. fl.example.org)") from None


def _checked(cfg_path: Path, check: Callable[[Any], Any], value: Any) -> Any:
    """``check(value)``, its refusal turned into a :class:`ConfigError` that names the file
    and the fix (a kit file may be damaged or edited by hand: hostile until checked)."""
    try:
        return check(value)
    except (ConfigError, EnrollmentError) as exc:
        raise ConfigError(f"{cfg_path}: {exc}; {_FIX}") from None


def _kit_path(root: Path, cfg_path: Path, key: str, table: dict[str, Any]) -> Path:
    """``table[key]``: a path relative to the kit, to a file that exists."""
    value = table[key]
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(f"{cfg_path}: {key} = {value!r} is not a file name (a non-empty "
                          f"string without NUL); {_FIX}")
    try:
        path = (root / value).resolve()
        found = path.is_file()
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop
        raise ConfigError(f"{cfg_path}: {key} = {value!r} cannot be resolved ({exc}); "
                          f"{_FIX}") from None
    if not found:
        raise ConfigError(f"{cfg_path}: {key} = {value!r} is not a file ({path}); restore "
                          "that file from your backup of the kit, or fix the value")
    return path


def load_kit(kit_dir: Path) -> MemberKit:
    """Load and check a member kit: every value checked whole, :class:`ConfigError` naming
    kit.toml, the key and the fix for one that is missing, of the wrong type or malformed."""
    root = Path(kit_dir).resolve()
    cfg_path = root / KIT_FILES["config"]
    cfg = read_toml(cfg_path, what="member kit configuration", missing=(
        f"{root} is not a member kit (no kit.toml): enroll with `xsilo silo enroll`, then "
        "`xsilo silo import-bundle`"))
    try:
        silo, gw = cfg["silo"], cfg["gateway"]
        if not isinstance(silo, dict) or not isinstance(gw, dict):
            raise TypeError("[silo] and [gateway] must be tables")
        sha256 = gw["coordinator_certificate_sha256"]
        if not isinstance(sha256, str):
            raise TypeError(f"gateway.coordinator_certificate_sha256 = {sha256!r} is not a "
                            "string")

        def p(key: str, table: dict[str, Any] = gw) -> Path:
            return _kit_path(root, cfg_path, key, table)

        def c(check: Callable[[Any], Any], key: str, table: dict[str, Any] = gw) -> Any:
            return _checked(cfg_path, check, table[key])

        return MemberKit(
            root=root, name=c(check_name, "name", silo),
            superlink=c(lambda v: check_hostport(v, "silo.superlink ="), "superlink", silo),
            root_certificates=p("root_certificates", silo), auth_key=p("auth_key", silo),
            node_public_key=p("node_public_key"),
            listen_port=c(lambda v: _port(v, "gateway.listen ="), "listen"),
            coordinator=c(lambda v: check_hostport(v, "gateway.coordinator ="), "coordinator"),
            server_name=c(_server_name, "server_name"), coordinator_sha256=sha256,
            ca_cert=p("ca_certificate"), client_cert=p("client_certificate"),
            client_key=p("client_key"), local_cert=p("local_certificate"),
            local_key=p("local_key"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{cfg_path} is incomplete or invalid ({exc!r}); re-run "
                          "`xsilo silo import-bundle`") from exc
