"""Record-level DP-SGD through Opacus on a tiny model: trains, reports ε that grows."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from strategies.dp.accounting import Accountant  # noqa: E402
from strategies.dp.dpsgd import make_private, opacus_epsilon, step_events  # noqa: E402
from xsilo.errors import ConfigError  # noqa: E402


def _setup():
    torch.manual_seed(0)  # data and init only; noise is Opacus'
    x = torch.randn(256, 5)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    model = torch.nn.Sequential(torch.nn.Linear(5, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return model, opt, loader


def test_dpsgd_trains_and_epsilon_grows():
    model, opt, loader = _setup()
    pt = make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0)
    assert opacus_epsilon(pt, delta=1e-5) == 0.0
    eps, losses = [], []
    for _ in range(3):
        for xb, yb in pt.data_loader:
            if len(xb) == 0:
                continue
            pt.optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(pt.model(xb), yb)
            loss.backward()
            pt.optimizer.step()
            losses.append(loss.item())
        eps.append(opacus_epsilon(pt, delta=1e-5))
    assert eps[0] > 0 and eps[0] < eps[1] < eps[2]
    assert pt.steps == 24 and pt.sample_rate == pytest.approx(1 / 8)
    ours = Accountant(1e-5, "rdp")
    for e in step_events(pt):
        ours.compose_round(e)
    assert ours.epsilon() == pytest.approx(eps[-1], rel=0.5)  # Opacus PRV vs our RDP


def test_dpsgd_without_clipping_refused():
    model, opt, loader = _setup()
    with pytest.raises(ConfigError, match="max_grad_norm"):
        make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=0.0)
