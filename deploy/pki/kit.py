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
from dataclasses import dataclass
from pathlib import Path

from xsilo.errors import ConfigError
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


def _port(value: str, where: str) -> int:
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise ConfigError(f'{where} = {value!r} is not "host:port" with a port in 1-65535 '
                          '(e.g. "127.0.0.1:9443"); fix it, or re-run `xsilo silo '
                          'import-bundle`')
    return int(port)


def load_kit(kit_dir: Path) -> MemberKit:
    """Load and check a member kit; :class:`ConfigError` names what is missing."""
    root = Path(kit_dir).resolve()
    cfg_path = root / KIT_FILES["config"]
    cfg = read_toml(cfg_path, what="member kit configuration", missing=(
        f"{root} is not a member kit (no kit.toml): enroll with `xsilo silo enroll`, then "
        "`xsilo silo import-bundle`"))
    try:
        silo, gw = cfg["silo"], cfg["gateway"]

        def p(key: str, table: dict[str, str] = gw) -> Path:
            path = (root / table[key]).resolve()
            if not path.is_file():
                raise ConfigError(f"{cfg_path}: {key} = {table[key]!r} does not exist ({path})")
            return path

        return MemberKit(
            root=root, name=silo["name"], superlink=silo["superlink"],
            root_certificates=p("root_certificates", silo), auth_key=p("auth_key", silo),
            node_public_key=p("node_public_key"),
            listen_port=_port(gw["listen"], "gateway.listen"), coordinator=gw["coordinator"],
            server_name=gw["server_name"],
            coordinator_sha256=gw["coordinator_certificate_sha256"],
            ca_cert=p("ca_certificate"), client_cert=p("client_certificate"),
            client_key=p("client_key"), local_cert=p("local_certificate"),
            local_key=p("local_key"))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{cfg_path} is incomplete or invalid ({exc!r}); re-run "
                          "`xsilo silo import-bundle`") from exc
