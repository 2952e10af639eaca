"""A complete federation on this machine: CA, coordinator, silos, real Flower processes.

Used by ``xsilo demo`` and by the end-to-end tests, so both exercise exactly the same
deployment path: a throw-away CA and coordinator certificate, one node-auth key per silo,
``flower-superlink`` with TLS + SuperNode authentication, one ``flower-supernode`` per silo
with its own key, config and data, all on 127.0.0.1 with ports chosen at run time.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console

from coordinator.config import RunConfig
from coordinator.console import follow_run
from coordinator.home import (CoordinatorHome, RunningCoordinator, start_coordinator,
                             write_gateway_home)
from coordinator.run_store import RunStore
from coordinator.runs import new_run_dir, prepare_run, resume_run, submit_run
from deploy.pki import certs
from deploy.launch.processes import ManagedProcess, free_port
from silo_client.config import SiloConfig, load_silo_config, write_silo_config
from silo_client.member import start_member
from federation.demo_data import demo_schema, write_demo_data
from xsilo.errors import DeploymentError

__all__ = ["LocalFederation", "RunOutcome"]

DEFAULT_MODEL = "sklearn:LogisticRegression"
log = logging.getLogger(__name__)


class RunOutcome:
    """How a run ended: Flower's status, our summary, and where its directory is."""

    def __init__(self, status: str, store: RunStore) -> None:
        self.status = status
        self.store = store
        self.summary = store.summary() or {}

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed" and self.summary.get("status") == "completed"


class LocalFederation:
    """Set up and run the demo hospitals' federation under ``root`` (a context manager)."""

    def __init__(self, root: Path, *, model: str = DEFAULT_MODEL,
                 write_data: Callable[[Path], list] = write_demo_data,
                 schema: dict | None = None, mtls: bool = False,
                 executor: str | None = None, allow_unapproved_code: bool = False,
                 policies: dict[str, str] | None = None) -> None:
        """``allow_unapproved_code``: give every silo a site policy that accepts running any
        app a run carries (UNSAFE; needed for ``executor="flower"``, see silo_client.apps).
        ``policies``: site-policy TOML text by silo name (e.g. a silo that refuses runs)."""
        self.root = Path(root)
        self.model = model
        self.write_data = write_data
        self.schema = schema or demo_schema()
        self.home_dir = self.root / "coordinator"
        self.silo_root = self.root / "silos"
        self.silos: list[SiloConfig] = []
        self.processes: list[ManagedProcess] = []
        self.coordinator: RunningCoordinator | None = None
        self.supernodes: dict[str, ManagedProcess] = {}
        self.port = 0
        self.mtls = mtls
        self.executor = executor  # None: the silo.toml default ("warm")
        self.allow_unapproved_code = allow_unapproved_code
        self.policies = dict(policies or {})
        self.gateways: dict[str, Any] = {}  # "coordinator" / silo name → gateway handle
        self.running: list[Any] = []  # what stop() stops, in reverse order
        self.kits: dict[str, Any] = {}

    # ---------------------------------------------------------------- set-up
    def setup(self) -> LocalFederation:
        """Certificates, node keys, data and configuration files (no processes yet)."""
        if self.mtls:
            return self._setup_mtls()
        self.port = free_port()
        CoordinatorHome.write(self.home_dir, host="127.0.0.1", port=self.port)
        data = self.write_data(self.silo_root)
        pki = self.home_dir / "pki"
        ca = certs.make_ca("xsilo demo CA", organization="xsilo demo consortium")
        certs.write_public_pem(pki / "ca.crt", ca.cert)
        certs.write_private_key(pki / "ca.key", ca.key)
        key = ec.generate_private_key(ec.SECP384R1())
        cert = certs.issue_leaf(ca, "coordinator", public_key=key.public_key(), days=2,
                                server_hosts=["localhost", "127.0.0.1", "::1"])
        certs.write_public_pem(pki / "coordinator.crt", cert)
        certs.write_private_key(pki / "coordinator.key", key)
        for silo in data:
            base = self.silo_root / silo.name
            certs.make_node_auth_key(base / "node.key", self.home_dir / "nodes" / f"{silo.name}.pub")
            shutil.copy(pki / "ca.crt", base / "ca.crt")
            path = write_silo_config(
                base / "silo.toml", name=silo.name, train="data/train.csv",
                test="data/test.csv", schema=self.schema, model=self.model,
                superlink=f"127.0.0.1:{self.port}", root_certificates="ca.crt",
                auth_key="node.key", executor=self.executor, policy_file=self._policy(base))
            self.silos.append(load_silo_config(path))
        return self

    def _setup_mtls(self) -> LocalFederation:
        """Consortium PKI, on-site enrollment of every silo, member kits (keys never move)."""
        from deploy.pki.enrollment import enroll, import_bundle
        from deploy.pki.authority import Pki

        self.port = free_port()  # the coordinator gateway: the only port silos reach
        superlink_port = free_port()
        pki = Pki.init(self.home_dir / "pki", organization="xsilo demo consortium")
        pki.issue_coordinator(hosts=["localhost", "127.0.0.1"], address=f"127.0.0.1:{self.port}")
        write_gateway_home(self.home_dir, pki_dir=self.home_dir / "pki", public_host="127.0.0.1",
                           gateway_port=self.port, superlink_port=superlink_port)
        for silo in self.write_data(self.silo_root):
            kit_dir = self.silo_root / silo.name / "kit"
            request = enroll(silo.name, kit_dir, email=f"it@{silo.name}.example",
                             organization=silo.name)
            kit = import_bundle(pki.approve(request), kit_dir, pki.ca_fingerprint,
                                local_port=free_port())
            self.kits[silo.name] = kit
            path = write_silo_config(
                kit_dir / "silo.toml", name=silo.name, train=silo.train.resolve(),
                test=silo.test.resolve(), schema=self.schema, model=self.model,
                superlink=kit.superlink, root_certificates=kit.root_certificates,
                auth_key=kit.auth_key, workspace=str(self.silo_root / silo.name / "workspace"),
                executor=self.executor, policy_file=self._policy(kit_dir),
                # its enrollment key signs its secure-aggregation keys; it checks its peers'
                identity={"certificate": kit.client_cert, "key": kit.client_key,
                          "ca": kit.ca_cert, "crl": kit.root / "crl.pem"})
            self.silos.append(load_silo_config(path))
        return self

    def _policy(self, silo_dir: Path) -> Path | None:
        """The site policy of the silo in ``silo_dir``: its ``policies`` text, plus the opt-out
        of approved code only when asked for; None when it has neither."""
        name = silo_dir.name if silo_dir.name != "kit" else silo_dir.parent.name
        text = self.policies.get(name, "")
        if self.allow_unapproved_code:
            text += "allow_unapproved_code = true  # UNSAFE: any app a run carries runs\n"
        if not text:
            return None
        path = silo_dir / "policy.toml"
        path.write_text(text)
        return path.resolve()

    @property
    def home(self) -> CoordinatorHome:
        return CoordinatorHome.load(self.home_dir)

    # -------------------------------------------------------------- processes
    def start(self) -> LocalFederation:
        """Start the SuperLink (registering every node key) and one SuperNode per silo."""
        self.coordinator = start_coordinator(self.home)
        self.running.append(self.coordinator)
        if self.coordinator.gateway is not None:
            self.gateways["coordinator"] = self.coordinator.gateway
        for silo in self.silos:
            member = start_member(silo)
            self.running.append(member)
            self.supernodes[silo.name] = member.supernode
            self.processes.append(member.supernode)
            if member.gateway is not None:
                self.gateways[silo.name] = member.gateway
        return self

    def restart_silo(self, name: str) -> None:
        """Stop silo ``name`` (SuperNode, then gateway) and start it again from its
        ``silo.toml``: the same node key, so the same node id, but a fresh SuperNode with no
        node-local state (what a silo operator's restart does)."""
        silo = next((s for s in self.silos if s.name == name), None)
        old = next((m for m in self.running
                    if getattr(m, "supernode", None) is self.supernodes.get(name)), None)
        if silo is None or old is None:
            raise DeploymentError(f"no running silo {name!r} in this federation; running: "
                                  f"{sorted(self.supernodes)}")
        old.stop()
        self.running.remove(old)
        member = start_member(silo)
        self.running.append(member)
        self.supernodes[name] = member.supernode
        self.processes.append(member.supernode)

    def restart_coordinator(self) -> list[str]:
        """What the coordinator host does when its SuperLink ends (killed, crashed): `xsilo
        coordinator start` stops what is left of the coordinator (gateway, SuperLink, the
        ServerApps that would outlive them) and exits, and its service manager (or the
        operator) starts it again on the same home, whose SuperLink database keeps the node
        registrations and the runs. The silos are left alone. Returns what the operator is
        told: the stop's lines, then the restarted coordinator's notices."""
        if self.coordinator is None:
            raise DeploymentError("this federation's coordinator was never started")
        said = self.coordinator.stop()
        self.running.remove(self.coordinator)
        self.gateways.pop("coordinator", None)
        self.coordinator = start_coordinator(self.home)
        self.running.insert(0, self.coordinator)  # stopped last, as before
        if self.coordinator.gateway is not None:
            self.gateways["coordinator"] = self.coordinator.gateway
        return [*said, *self.coordinator.notices]

    def stop(self) -> None:
        """Stop everything this federation started (idempotent): silos (SuperNode, then
        gateway), then the coordinator (gateway, then SuperLink)."""
        while self.running:
            item = self.running.pop()
            try:
                item.stop()
            except Exception as exc:  # teardown must reach every process
                log.warning("could not stop %s: %s", item, exc)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------- runs
    def run(self, config: RunConfig, *, console: Console | None = None,
            timeout: float = 600.0, name: str | None = None) -> RunOutcome:
        """Submit ``config`` with ``flwr run`` and wait until Flower reports it finished."""
        run_id, store = self.submit(config, name=name)
        return self.wait(run_id, store, console=console, timeout=timeout)

    def submit(self, config: RunConfig, *, name: str | None = None) -> tuple[int, RunStore]:
        """Start ``config`` (checked first, as ``xsilo coordinator run`` does); return the
        Flower run id and the run's store without waiting."""
        home = self.home
        run_dir = new_run_dir(home.runs, name or config.name)
        config = prepare_run(run_dir, {**config.to_dict(), "name": run_dir.name})
        return submit_run(home.cli(), run_dir, config)

    def resume(self, name: str, *, timeout: float = 600.0) -> RunOutcome:
        """``xsilo coordinator run --resume NAME``: continue the run from its last complete
        round and wait until Flower reports it finished."""
        run_id, store = resume_run(self.home.cli(), self.home.runs / name)
        return self.wait(run_id, store, timeout=timeout)

    def wait(self, run_id: int, store: RunStore, *, console: Console | None = None,
             timeout: float = 600.0) -> RunOutcome:
        """Wait until Flower reports run ``run_id`` finished."""
        cli = self.home.cli()
        if console is not None:
            status = follow_run(store, lambda: cli.status(run_id), console=console,
                                timeout=timeout)
        else:
            status = self._wait(store, lambda: cli.status(run_id), timeout)
        return RunOutcome(status, store)

    def _wait(self, store: RunStore, status: Callable[[], str], timeout: float, *,
              status_every: float = 10.0) -> str:
        """Wait for the run to end. Our ``summary.json`` is watched twice a second (a file
        read); Flower's status costs a ``flwr ls`` process (~1 s of CPU, which the silos'
        ClientApps on the same cores would otherwise lose), so it is asked every
        ``status_every`` s (a ServerApp that died before writing a summary) and once the
        summary is there."""
        deadline = time.monotonic() + timeout
        next_status = time.monotonic() + status_every
        while time.monotonic() < deadline:
            if store.summary() is not None or not self._superlink_alive():
                # Our summary is written last by the ServerApp; Flower then marks the run.
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    state = status()
                    if state.startswith("finished"):
                        return state
                    time.sleep(1)
            if time.monotonic() >= next_status:
                state = status()
                if state.startswith("finished"):
                    return state
                next_status = time.monotonic() + status_every
            time.sleep(0.5)
        raise DeploymentError(f"run did not finish within {timeout:.0f} s")

    def _superlink_alive(self) -> bool:
        return self.coordinator is not None and self.coordinator.superlink.alive()
