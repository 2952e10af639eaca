"""The silo's configuration file (``silo.toml``), parsed once into a frozen object.

::

    [silo]
    name = "hospital-a"
    workspace = "workspace"           # egress ledger and privacy tally live here
    superlink = "127.0.0.1:9092"      # the coordinator (or the local TLS gateway)
    root_certificates = "ca.crt"      # CA that signed the coordinator/gateway certificate
    auth_key = "node.key"             # Flower node-authentication key (OpenSSH ECDSA, 0600)

    [data]
    train = "data/train.csv"          # CSV or Parquet
    test = "data/test.csv"            # optional local hold-out set

    [data.schema]                     # see silo_client.data.DataSchema
    label = "label"
    label_values = [0, 1]
    features = { "mean radius" = "float", … }

    [model]
    spec = "sklearn:LogisticRegression"   # or "my_pkg.models:build"
    params = { C = 1.0 }                  # passed to the builder
    dp_sgd = { noise_multiplier = 1.0, max_grad_norm = 1.0 }   # optional, torch only:
                                          # record-level DP-SGD (silo_client.dpsgd)

    [policy]
    file = "policy.toml"              # optional site policy

    [identity]                        # optional: sign secure-aggregation keys, check peers'
    certificate = "silo.crt"          # (silo_client.identity; the member kit writes it)
    key = "silo.key"
    ca = "ca.crt"
    crl = "crl.pem"                   # optional

Relative paths are resolved against the directory of the file itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from deploy import EXECUTORS
from silo_client.data import DataSchema
from silo_client.dpsgd import DPSGDSettings
from xsilo.errors import ConfigError
from xsilo.files import atomic_write, read_toml
from xsilo.terms import SILO_NAME_RULE, is_silo_name

__all__ = ["SiloConfig", "load_silo_config", "write_silo_config"]

_SECTIONS = {
    "silo": {"name", "workspace", "superlink", "root_certificates", "auth_key", "executor"},
    "data": {"train", "test", "schema"},
    "model": {"spec", "params", "dp_sgd"},
    "policy": {"file"},
    "identity": {"certificate", "key", "ca", "crl"},
}
# Gateway settings people put in silo.toml by mistake: they live in the member kit.
_KIT_KEYS = {
    "gateway": "the coordinator address is `coordinator` in [gateway] of the member kit's "
               "kit.toml",
    "client_cert": "the silo's client certificate is `client_certificate` in [gateway] of the "
                   "member kit's kit.toml",
    "client_key": "the silo's TLS key is `client_key` in [gateway] of the member kit's kit.toml",
}


@dataclass(frozen=True)
class SiloConfig:
    """A validated silo configuration with absolute paths."""

    name: str
    path: Path
    workspace: Path
    train: Path
    schema: DataSchema
    model: str
    test: Path | None = None
    superlink: str | None = None
    root_certificates: Path | None = None
    auth_key: Path | None = None
    model_params: Mapping[str, Any] = field(default_factory=dict)
    policy_file: Path | None = None
    dp_sgd: DPSGDSettings | None = None
    # How the SuperNode runs ClientApps: "warm" (xsilo's SuperExec, deploy.launch.executor: a
    # process per message forked from a preloaded server) or "flower" (Flower's own).
    executor: str = EXECUTORS[0]
    # [identity]: the enrollment certificate and key that sign this silo's secure-aggregation
    # keys, and the consortium CA (and CRL) that check its peers' (silo_client.identity).
    identity_certificate: Path | None = None
    identity_key: Path | None = None
    identity_ca: Path | None = None
    identity_crl: Path | None = None


def _check_keys(data: Mapping[str, Any], path: Path) -> None:
    for section, value in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]; "
                              f"accepted: {', '.join(sorted(_SECTIONS))}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: [{section}] must be a table")
        unknown = set(value) - _SECTIONS[section]
        misplaced = sorted(unknown & _KIT_KEYS.keys()) if section == "silo" else []
        if misplaced:
            key = misplaced[0]
            raise ConfigError(
                f"{path}: [silo] {key} is not a silo.toml setting: {_KIT_KEYS[key]} (written "
                "by `xsilo silo import-bundle`; start with `xsilo silo start --kit KIT`). "
                "Remove it from silo.toml")
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} in "
                              f"[{section}]; accepted: {', '.join(sorted(_SECTIONS[section]))}")


def _require(table: Mapping[str, Any], key: str, section: str, path: Path) -> Any:
    if key not in table or table[key] in ("", None):
        raise ConfigError(f"{path}: [{section}] needs `{key}`")
    return table[key]


def _table(value: Any, what: str, path: Path) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: {what} = {value!r:.80} must be a table, e.g. {{ C = 1.0 }}")
    return dict(value)


def _silo_name(value: Any, path: Path) -> str:
    """``[silo] name`` by the rule the coordinator reads a join with
    (:func:`xsilo.terms.is_silo_name`): it names the silo in the ledger, in error replies,
    in its service unit and in file names."""
    if not is_silo_name(value):
        raise ConfigError(f"{path}: [silo] name = {value!r:.80} must be text of "
                          f"{SILO_NAME_RULE} (the name the silo enrolled under, e.g. "
                          "'hospital-a')")
    return value


def load_silo_config(path: str | Path) -> SiloConfig:
    """Read and validate ``silo.toml``; every problem is a ConfigError naming the key."""
    path = Path(path).expanduser().resolve()
    data = read_toml(path, what="silo configuration", missing=(
        f"silo configuration {path} does not exist; pass the member kit's silo.toml "
        "(`xsilo silo start --config PATH`)"))
    _check_keys(data, path)
    base = path.parent

    def resolve(value: Any) -> Path | None:
        return None if value in (None, "") else (base / str(value)).resolve()

    silo, dat, model = data.get("silo", {}), data.get("data", {}), data.get("model", {})
    name = _silo_name(_require(silo, "name", "silo", path), path)
    executor = silo.get("executor", EXECUTORS[0])
    if executor not in EXECUTORS:
        raise ConfigError(f"{path}: [silo] executor = {executor!r} is not one of \"warm\" "
                          "(xsilo's SuperExec, the default) or \"flower\" (Flower's own)")
    schema_table = _require(dat, "schema", "data", path)
    return SiloConfig(
        name=name,
        path=path,
        workspace=resolve(silo.get("workspace", "workspace")),  # type: ignore[arg-type]
        superlink=silo.get("superlink"),
        root_certificates=resolve(silo.get("root_certificates")),
        auth_key=resolve(silo.get("auth_key")),
        train=resolve(_require(dat, "train", "data", path)),  # type: ignore[arg-type]
        test=resolve(dat.get("test")),
        schema=DataSchema.from_mapping(schema_table),
        model=str(_require(model, "spec", "model", path)),
        model_params=_table(model.get("params", {}), "[model] params", path),
        policy_file=resolve(data.get("policy", {}).get("file")),
        dp_sgd=_dp_sgd(model.get("dp_sgd"), path),
        executor=executor,
        **_identity(data.get("identity"), path, resolve),
    )


def _identity(table: Any, path: Path, resolve: Any) -> dict[str, Path | None]:
    if table is None:
        return {}
    missing = [k for k in ("certificate", "key", "ca") if not table.get(k)]
    if missing:
        raise ConfigError(f"{path}: [identity] needs certificate, key and ca (the member kit's "
                          f"silo.crt, silo.key, ca.crt); missing {missing}")
    return {"identity_certificate": resolve(table["certificate"]),
            "identity_key": resolve(table["key"]), "identity_ca": resolve(table["ca"]),
            "identity_crl": resolve(table.get("crl"))}


def _dp_sgd(table: Any, path: Path) -> DPSGDSettings | None:
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: [model] dp_sgd must be a table, e.g. "
                          "{ noise_multiplier = 1.0, max_grad_norm = 1.0 }")
    return DPSGDSettings.from_mapping(table, source=str(path))


def write_silo_config(path: Path, *, name: str, train: Path, schema: Mapping[str, Any],
                      model: str, test: Path | None = None, superlink: str | None = None,
                      root_certificates: Path | None = None, auth_key: Path | None = None,
                      model_params: Mapping[str, Any] | None = None,
                      policy_file: Path | None = None, workspace: str = "workspace",
                      dp_sgd: Mapping[str, Any] | None = None,
                      executor: str | None = None,
                      identity: Mapping[str, Path] | None = None) -> Path:
    """Write a ``silo.toml`` (paths stored as given); return its path."""
    import tomli_w

    silo: dict[str, Any] = {"name": name, "workspace": workspace}
    for key, value in (("superlink", superlink), ("root_certificates", root_certificates),
                       ("auth_key", auth_key), ("executor", executor)):
        if value is not None:
            silo[key] = str(value)
    data: dict[str, Any] = {"silo": silo, "data": {"train": str(train)}}
    if test is not None:
        data["data"]["test"] = str(test)
    data["data"]["schema"] = dict(schema)
    data["model"] = {"spec": model, "params": dict(model_params or {})}
    if dp_sgd is not None:
        data["model"]["dp_sgd"] = dict(dp_sgd)
    if policy_file is not None:
        data["policy"] = {"file": str(policy_file)}
    if identity is not None:  # keys: certificate, key, ca, optionally crl
        data["identity"] = {k: str(v) for k, v in identity.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, tomli_w.dumps(data))
    return path
