"""Differential privacy at the silo: its own ε tally and refusal, and record-level DP-SGD.

Silo-level DP (central, distributed)
    The coordinator sends the run's ``[dp]`` table (JSON under ``"dp"``) at join and with
    every round. The silo rebuilds a validated :class:`~strategies.dp.DPConfig` from it,
    derives the round's accounting event *itself* (for the distributed mechanism it
    recomputes the zCDP ρ from the KLS calibration) and composes it in its own
    :class:`~strategies.dp.Accountant` — a number the coordinator sends is never used as ε.
    Per run, the accountant's history lives in ``workspace/privacy/<run>.json``; the
    site-lifetime total in ``workspace/privacy-tally.json`` (:class:`PrivacyTally`, runs add
    up). A round whose ε would cross the site policy's ``max_epsilon`` is refused with
    ``PolicyRefusal("max_epsilon")`` before anything is sent. The silo counts a round when
    it sends its update (conservative: the coordinator counts only rounds it released).

Record-level DP-SGD (torch silos)
    ``[model] dp_sgd = {noise_multiplier = 1.0, max_grad_norm = 1.0, delta = 1e-5}`` makes
    a torch silo train through Opacus (:func:`strategies.dp.dpsgd.make_private`): per-example
    clipping, Gaussian noise per batch, Poisson sampling. Every optimizer step is a sampled
    Gaussian event; the silo composes them across rounds in its own accountant and reports
    ``dpsgd_epsilon`` / ``dpsgd_delta`` with its metrics. torch is imported only here, on
    that path.

Under secure aggregation
    :func:`secure_update` clips the update (and, for the distributed mechanism, encodes it
    with this silo's discrete-Gaussian share) before ``silo_client.secure.mask`` masks it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from silo_client.policy import PrivacyTally, RunTerms, SitePolicy, check_round
from strategies.dp import (Accountant, ClipResult, DPConfig, GaussianRound, ZCDPRound,
                           clip_update, default_source, encode_update)
from strategies.secagg import SecAggConfig
from xsilo.errors import ConfigError, ModelError, ProtocolError
from xsilo.protocol import flatten_update, model_length

__all__ = ["DPSGDSettings", "RoundPrivacy", "SecureDPUpdate", "SiloPrivacy", "attach_dpsgd",
           "dp_terms", "secure_update"]

TALLY_FILE = "privacy-tally.json"


def _secure_round(config: Mapping[str, Any]) -> bool:
    """Whether a train config is a secure-aggregation round (the coordinator adds
    ``"secagg-weighted"`` to every masked round; ``"secure-aggregation"`` is the join term)."""
    return "secagg-weighted" in config or bool(config.get("secure-aggregation", False))


def dp_terms(config: Mapping[str, Any]) -> DPConfig | None:
    """The run's DP settings from a join/train config (None: the run uses no DP)."""
    raw = config.get("dp")
    if raw in (None, ""):
        return None
    try:
        table = json.loads(str(raw))
    except ValueError as exc:
        raise ConfigError(f"the coordinator sent a malformed dp table ({exc})") from exc
    return DPConfig.from_mapping(table)


def _event(dp: DPConfig, config: Mapping[str, Any], dimension: int | None) -> GaussianRound | ZCDPRound:
    if dp.mechanism != "distributed":
        return dp.round_event()
    if dimension is None:
        raise ConfigError("the distributed round event needs the model's parameter count")
    # Rounds carry n and t (checked against the protocol state before masking); at join the
    # roster is not final yet: project with the silos contacted and the default threshold.
    n = int(config.get("dp-num-silos") or config.get("num-silos") or 0)
    t = int(config.get("dp-min-survivors") or max(2, int(config.get("min-silos", 2)),
                                                     math.ceil(2 * n / 3)))
    if n < 2:
        raise ConfigError("the distributed round event needs the number of silos (dp-num-silos)")
    params = dp.ddg_params(num_silos=n, min_survivors=min(t, n), dimension=dimension)
    return dp.round_event(params.calibrate())


# Debug hook: when set (by tests), sees every ClipResult a silo makes before masking.
CLIP_OBSERVER: Callable[[ClipResult], None] | None = None


@dataclass(frozen=True)
class SecureDPUpdate:
    """What a silo masks under secure aggregation with DP: ``silo_step`` keyword arguments
    (``update``/``weight`` for central, ``encoded`` for distributed)."""

    step_kwargs: dict[str, Any]
    clip_norm: float


def secure_update(dp: DPConfig, config: Mapping[str, Any], *, delta: Mapping[str, np.ndarray],
                  template: Mapping[str, np.ndarray], num_examples: float, weighted: bool,
                  secagg: SecAggConfig) -> SecureDPUpdate:
    """Clip (and, distributed, encode with the noise share) before the update is masked.

    The capped weight is folded into the update as ``min(w, w_max)/w_max`` (the coordinator
    multiplies the sum by ``w_max`` and divides by the public ``participants · w_max``).
    Central: clip to ``C − step·√d`` so that the quantizer's rounding (< one step per value)
    keeps the masked contribution within C; weight word 1. Distributed: KLS
    ``encode_update`` with the round's public rotation seed. Nothing about the clipping
    leaves the silo (adaptive clipping is refused under secure aggregation).

    Raises
    ------
    ProtocolError
        The round's n, t or seed disagree with this silo's secure-aggregation state (the ε
        it accounted would not be the ε of the round).
    """
    n, t = len(secagg.roster), secagg.threshold
    if (int(config.get("dp-num-silos", -1)), int(config.get("dp-min-survivors", -1))) != (n, t):
        raise ProtocolError(
            f"the round's DP terms name n={config.get('dp-num-silos')}, "
            f"t={config.get('dp-min-survivors')} but this silo's secure-aggregation run has "
            f"n={n}, t={t}; refusing (its ε would be accounted for the wrong mechanism)")
    weight = float(num_examples) if weighted else 1.0
    fraction = min(weight, dp.max_weight) / dp.max_weight
    dimension = model_length(template)
    clip = float(dp.clip_norm)  # type: ignore[arg-type]
    if dp.mechanism == "central":
        clip -= secagg.quant.step * math.sqrt(dimension)
    clipped = clip_update(delta, clip_norm=clip)
    if CLIP_OBSERVER is not None:
        CLIP_OBSERVER(clipped)
    if dp.mechanism == "central":
        update = flatten_update(clipped.update, template) * fraction
        return SecureDPUpdate({"update": update, "weight": 1}, clip)
    params = dp.ddg_params(num_silos=n, min_survivors=t, dimension=dimension)
    seed = _rotation_seed(config)
    if params.calibrate().padded_dim != secagg.length or not secagg.encoded or (
            params.modulus_bits != secagg.quant.modulus_bits):
        raise ProtocolError("the secure-aggregation run does not mask this mechanism's encoding "
                            f"(length {secagg.length}, 2^{secagg.quant.modulus_bits}); re-key")
    encoded, _, _ = encode_update(clipped.update, params=params, rotation_seed=seed,
                                  rng=default_source(), weight_fraction=fraction)
    return SecureDPUpdate({"encoded": encoded}, clip)


def _rotation_seed(config: Mapping[str, Any]) -> bytes:
    try:
        seed = bytes.fromhex(str(config.get("dp-rotation-seed", "")))
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise ProtocolError("the round carries no valid dp-rotation-seed (32 bytes, hex); "
                            "the distributed mechanism needs the round's public rotation seed")
    return seed


@dataclass
class RoundPrivacy:
    """One round's silo-side accounting, checked but not yet committed."""

    run: str
    server_round: int
    event: GaussianRound | ZCDPRound
    epsilon_after: float
    clip_norm: float
    noise_sigma: float
    state_path: Path
    accountant: Accountant
    counted: bool = False  # the round was already counted (a redelivered message)


class SiloPrivacy:
    """A silo's privacy bookkeeping over its workspace and site policy."""

    def __init__(self, workspace: Path, policy: SitePolicy) -> None:
        self.workspace = Path(workspace)
        self.policy = policy

    @property
    def tally(self) -> PrivacyTally:
        return PrivacyTally(self.workspace / TALLY_FILE, max_epsilon=self.policy.max_epsilon)

    def run_terms(self, terms: Mapping[str, Any], *, dimension: int | None = None,
                  **base: Any) -> RunTerms:
        """:class:`RunTerms` with the run's projected total ε, computed here from its terms."""
        dp = dp_terms(terms)
        if dp is None:
            return RunTerms(**base)
        acct, event = dp.accountant(), _event(dp, terms, dimension)
        for _ in range(int(terms.get("num-rounds", 0))):
            acct.compose_round(event)
        projected = acct.epsilon()
        if dp.max_epsilon is not None:
            projected = min(projected, dp.max_epsilon)
        return RunTerms(**base, dp_epsilon_total=projected, dp_delta=dp.delta)

    def _load(self, run: str, dp: DPConfig) -> tuple[Path, Accountant, list[int]]:
        path = self.workspace / "privacy" / f"{_safe(run)}.json"
        if not path.exists():
            return path, dp.accountant(), []
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            return path, Accountant.from_state_dict(state["accountant"]), list(state["rounds"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"privacy state {path} is unreadable ({exc}); restore it from "
                              "backup: spent budget must not be forgotten") from exc

    def begin_round(self, config: Mapping[str, Any], *, dimension: int | None = None,
                    secure: bool | None = None) -> RoundPrivacy | None:
        """Check this round against the site policy; raise PolicyRefusal before any work.

        ``secure``: whether this round's update will be masked (the train message carries a
        mask request); None reads it from the round config (``"secagg-weighted"`` present).
        """
        server_round = int(config.get("server-round", 0))
        terms = {"server_round": server_round, "participants": int(config.get("participants", 0)),
                 "strategy": None if config.get("strategy") is None else str(config["strategy"]),
                 "secure_aggregation": _secure_round(config) if secure is None else bool(secure)}
        dp = dp_terms(config)
        if dp is None:
            check_round(self.policy, **terms, epsilon_spent=None, epsilon_next=None)
            return None
        run = str(config.get("dp-run") or "unnamed-run")
        path, acct, rounds = self._load(run, dp)
        if acct.delta != dp.delta or acct.method != dp.accounting_method:
            raise ConfigError(f"run {run}: the coordinator changed delta or the accounting method "
                              "mid-run; the silo refuses mixed accounting")
        event = _event(dp, config, dimension)
        counted = server_round in rounds
        eps_after = acct.epsilon() if counted else acct.epsilon_if(event)
        tally = self.tally
        check_round(self.policy, **terms, epsilon_spent=tally.total(),
                    epsilon_next=tally.total_after(run, eps_after))
        return RoundPrivacy(run, server_round, event, eps_after,
                            float(config.get("dp-clip-norm", dp.clip_norm)),
                            float(config.get("dp-noise-stddev", 0.0)), path, acct, counted)

    def commit(self, rp: RoundPrivacy) -> float:
        """Record the round (before the update leaves the site); return the run's ε."""
        if not rp.counted:
            rp.accountant.compose_round(rp.event)
            rounds = [*self._load_rounds(rp.state_path), rp.server_round]
            rp.state_path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(rp.state_path, json.dumps(
                {"accountant": rp.accountant.state_dict(), "rounds": rounds}, sort_keys=True))
        eps = rp.accountant.epsilon()
        self.tally.record(rp.run, rp.server_round, eps)
        return eps

    @staticmethod
    def _load_rounds(path: Path) -> list[int]:
        return list(json.loads(path.read_text())["rounds"]) if path.exists() else []


def ledger_fields(rp: RoundPrivacy | None, epsilon: float | None) -> dict[str, float | None]:
    """``clip_norm``, ``noise_sigma`` and cumulative ``epsilon`` for the egress ledger."""
    if rp is None:
        return {"clip_norm": None, "noise_sigma": None, "epsilon": None}
    return {"clip_norm": rp.clip_norm, "noise_sigma": rp.noise_sigma, "epsilon": epsilon}


def _safe(run: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run)[:80] or "run"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- DP-SGD
@dataclass(frozen=True)
class DPSGDSettings:
    """``[model] dp_sgd`` in silo.toml: record-level DP-SGD for a torch silo."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    accounting: str = "rdp"

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "max_grad_norm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"[model] dp_sgd.{name} = {v!r}: must be a positive number "
                                  "(DP-SGD without per-example clipping and noise has no guarantee)")
        Accountant(self.delta, self.accounting)  # validates delta and the method

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], *, source: str = "silo.toml") -> DPSGDSettings:
        known = {"noise_multiplier", "max_grad_norm", "delta", "accounting"}
        unknown = sorted(set(table) - known)
        missing = sorted({"noise_multiplier", "max_grad_norm"} - set(table))
        if unknown or missing:
            raise ConfigError(f"{source}: [model] dp_sgd needs noise_multiplier and max_grad_norm "
                              f"(optional: delta, accounting); unknown {unknown}, missing {missing}")
        return cls(**dict(table))


@dataclass
class DPSGDReport:
    """Filled by the DP-SGD training function; read into the round's metrics."""

    epsilon: float | None = None
    delta: float | None = None
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        if self.epsilon is None:
            return {}
        return {"dpsgd_epsilon": float(self.epsilon), "dpsgd_delta": float(self.delta or 0.0),
                "dpsgd_steps": float(self.steps)}


def attach_dpsgd(adapter: Any, settings: DPSGDSettings, *, state_path: Path) -> DPSGDReport:
    """Make ``adapter`` (a :class:`TorchAdapter`) train with DP-SGD; return its report.

    ε composes over every round of the run: the step history is kept in ``state_path``.
    """
    if not hasattr(adapter, "module") or not hasattr(adapter, "train_fn"):
        raise ModelError("[model] dp_sgd needs a torch model (an nn.Module spec); this silo's "
                         f"model is {type(adapter).__name__}. Remove dp_sgd or use a torch model")
    if adapter.train_fn is not None:
        raise ModelError("[model] dp_sgd replaces the training loop; this model brings its own "
                         "train_fn. Remove one of them")
    report = DPSGDReport()

    def train_fn(module: Any, train: Any, *, epochs: int, config: Mapping[str, Any],
                 device: Any, proximal: Any) -> float:
        if float(config.get("proximal-mu", 0.0) or 0.0) > 0:
            raise ConfigError("FedProx's proximal term is not supported with [model] dp_sgd "
                              "(Opacus clips per-example gradients only); use fedavg")
        loss, training = _dpsgd_epochs(adapter, module, train, epochs=epochs, config=config,
                                       settings=settings)
        _account_steps(report, training, settings, state_path, config)
        return loss

    adapter.train_fn = train_fn
    return report


def _dpsgd_epochs(adapter: Any, module: Any, train: Any, *, epochs: int,
                  config: Mapping[str, Any], settings: DPSGDSettings) -> tuple[float, Any]:
    import torch

    from strategies.dp.dpsgd import make_private

    # DP-SGD's noise and batch sampling come from xsilo's secure source (make_private), not
    # from torch's generator. The adapter seeds torch from the run seed for reproducible
    # dropout; reseed so dropout masks do not repeat across rounds either.
    torch.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    X, y = adapter._tensors(train)
    batch = int(config.get("batch-size", adapter.batch_size))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=batch)
    lr = float(config.get("learning-rate", 0.01))
    optimizer = adapter.optimizer_fn(module.parameters(), lr)
    training = make_private(module, optimizer, loader, noise_multiplier=settings.noise_multiplier,
                            max_grad_norm=settings.max_grad_norm)
    total, count = 0.0, 0
    for _ in range(max(1, int(epochs))):
        total, count = 0.0, 0
        for xb, yb in training.data_loader:
            if len(xb) == 0:
                continue
            training.optimizer.zero_grad()
            out = training.model(xb.to(adapter.device))
            loss = adapter.loss_fn(out, yb.to(adapter.device))
            loss.backward()
            training.optimizer.step()
            total, count = total + float(loss.detach()) * len(xb), count + len(xb)
    if count == 0 or not math.isfinite(total):
        raise ModelError(f"DP-SGD training produced no finite loss ({total}/{count}); lower "
                         "learning-rate or raise batch-size")
    return total / count, training


def _account_steps(report: DPSGDReport, training: Any, settings: DPSGDSettings,
                   state_path: Path, config: Mapping[str, Any]) -> None:
    from strategies.dp.dpsgd import step_events

    acct = Accountant(settings.delta, settings.accounting)
    if state_path.exists():
        acct = Accountant.from_state_dict(json.loads(state_path.read_text())["accountant"])
    for event in step_events(training):
        acct.compose_round(event)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(state_path, json.dumps({"accountant": acct.state_dict(),
                                          "last_round": int(config.get("server-round", 0))}))
    report.epsilon, report.delta, report.steps = acct.epsilon(), settings.delta, training.steps
