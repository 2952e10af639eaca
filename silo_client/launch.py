"""Start a silo's Flower SuperNode from its ``silo.toml``."""

from __future__ import annotations

from pathlib import Path

from deploy.gateway.netns import Uplink
from deploy.launch.processes import ManagedProcess, free_port, start_supernode
from silo_client.apps import check_executor
from silo_client.config import SiloConfig
from silo_client.data import load_dataset
from silo_client.policy import SitePolicy
from xsilo.errors import ConfigError

__all__ = ["APP_GATE", "model_modules", "start_silo"]

# What the warm executor asks, for every task, which code may answer it (approved apps only).
APP_GATE = "silo_client.apps:admit"


def start_silo(config: SiloConfig, *, log_path: Path | None = None,
               clientappio_port: int | None = None, validate: bool = True,
               uplink: Uplink | None = None) -> ManagedProcess:
    """Validate local data, then start the SuperNode (TLS + node auth key) for this silo.

    With an ``uplink`` (a member kit's silo gateway on a unix socket) the SuperNode and its
    SuperExec run in a private network namespace: no other local account can reach their
    Runtime API (:func:`deploy.launch.processes.start_supernode`).

    A silo whose executor cannot keep to approved apps does not start (ConfigError), unless
    its site policy accepts that (``allow_unapproved_code``:
    :func:`~silo_client.apps.check_executor`).
    """
    check_executor(config, SitePolicy.load(config.policy_file) if config.policy_file
                   else SitePolicy())
    for key in ("superlink", "root_certificates", "auth_key"):
        if not getattr(config, key):
            raise ConfigError(f"{config.path}: [silo] needs `{key}` to join a federation")
    for key in ("root_certificates", "auth_key"):
        if not Path(getattr(config, key)).is_file():
            raise ConfigError(f"{config.path}: {key} file {getattr(config, key)} does not exist")
    if validate:  # fail here, loudly, rather than in the first round
        load_dataset(config.train, config.schema)
        if config.test is not None:
            load_dataset(config.test, config.schema)
    config.workspace.mkdir(parents=True, exist_ok=True)
    return start_supernode(
        flwr_home=config.workspace / "flwr-home",
        log_path=log_path or config.workspace / "supernode.log",
        superlink=str(config.superlink), root_cert=Path(config.root_certificates),  # type: ignore[arg-type]
        auth_key=Path(config.auth_key),  # type: ignore[arg-type]
        silo_config=config.path, clientappio_port=clientappio_port or free_port(),
        executor=config.executor, preload=model_modules(config.model), app_gate=APP_GATE,
        uplink=uplink)


def model_modules(spec: str) -> list[str]:
    """Modules the silo's model spec imports, for the warm ClientApp server to preload."""
    module, sep, _ = spec.partition(":")
    if not sep or not module:
        return []
    return ["silo_client.adapters.sklearn"] if module == "sklearn" else [module]
