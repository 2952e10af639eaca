"""Start a silo's Flower SuperNode from its ``silo.toml``."""

from __future__ import annotations

from pathlib import Path

from deploy.launch.processes import ManagedProcess, free_port, start_supernode
from silo_client.config import SiloConfig
from silo_client.data import load_dataset
from xsilo.errors import ConfigError

__all__ = ["model_modules", "start_silo"]


def start_silo(config: SiloConfig, *, log_path: Path | None = None,
               clientappio_port: int | None = None, validate: bool = True) -> ManagedProcess:
    """Validate local data, then start the SuperNode (TLS + node auth key) for this silo."""
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
        executor=config.executor, preload=model_modules(config.model))


def model_modules(spec: str) -> list[str]:
    """Modules the silo's model spec imports, for the warm ClientApp server to preload."""
    module, sep, _ = spec.partition(":")
    if not sep or not module:
        return []
    return ["silo_client.adapters.sklearn"] if module == "sklearn" else [module]
