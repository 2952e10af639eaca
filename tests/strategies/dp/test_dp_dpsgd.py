"""Record-level DP-SGD on a tiny model: trains, reports ε that grows; noise and Poisson
sampling come from xsilo's secure byte source, never from torch's generator."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from strategies.dp import dpsgd  # noqa: E402
from strategies.dp.accounting import Accountant  # noqa: E402
from strategies.dp.dpsgd import (  # noqa: E402
    SecurePoissonSampler,
    make_private,
    opacus_epsilon,
    step_events,
)
from strategies.randomness import KeystreamSource, SystemSource  # noqa: E402
from xsilo.errors import ConfigError  # noqa: E402


def _setup(width: int = 5, hidden: int | None = None):
    torch.manual_seed(0)  # data and init only; DP noise and sampling do not use torch's RNG
    x = torch.randn(256, width)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    layers = [torch.nn.Linear(width, 2)] if hidden is None else [
        torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2)]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return model, opt, loader


def _epoch(pt, on_step=None) -> None:
    for xb, yb in pt.data_loader:
        pt.optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(pt.model(xb), yb)
        loss.backward()
        pt.optimizer.step()
        if on_step is not None:
            on_step(xb)


def _trained(rng, *, torch_seed: int) -> list[torch.Tensor]:
    model, opt, loader = _setup()
    pt = make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0, rng=rng)
    torch.manual_seed(torch_seed)
    _epoch(pt)
    return [p.detach().clone() for p in model.parameters()]


def _key(i: int) -> KeystreamSource:
    return KeystreamSource(bytes([i]) * 32)


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


def test_model_in_eval_mode_refused():
    model, opt, loader = _setup()
    model.eval()
    with pytest.raises(ConfigError, match="training mode"):
        make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0)


def test_added_noise_has_std_z_times_c_and_clipping_is_kept():
    from scipy import stats

    z, clip = 1.3, 0.05
    model, opt, loader = _setup(width=40, hidden=60)  # 2 582 parameters
    pt = make_private(model, opt, loader, noise_multiplier=z, max_grad_norm=clip, rng=_key(1))
    batch = pt.optimizer.expected_batch_size
    assert batch == 32
    noise, sizes = [], []

    def collect(xb) -> None:
        summed = [p.summed_grad.double() for p in pt.optimizer.params]
        sizes.append(len(xb))
        # Opacus' clipping still bounds every example: |Σ clipped| <= batch size * C
        norm = math.sqrt(sum(float((s * s).sum()) for s in summed))
        assert norm <= len(xb) * clip * (1 + 1e-5)
        for p, s in zip(pt.optimizer.params, summed):
            noise.append((p.grad.double() * batch - s).reshape(-1).numpy())

    _epoch(pt, collect)
    sample = np.concatenate(noise)
    sigma = z * clip
    assert sample.size == 8 * 2582 and sum(sizes) > 0
    assert abs(sample.mean()) < 5 * sigma / math.sqrt(sample.size)
    assert sample.std() / sigma == pytest.approx(1.0, abs=0.03)  # ±0.3 % is one s.d.
    assert stats.kstest(sample / sigma, "norm").pvalue > 1e-3


def test_seeded_source_reproduces_a_run_whatever_torch_is_seeded_with():
    a = _trained(_key(2), torch_seed=1)
    b = _trained(_key(2), torch_seed=999)
    c = _trained(_key(3), torch_seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_default_source_is_not_torch_seeded():
    # with Opacus' own noise (torch's generator) equal torch seeds would give equal runs
    a = _trained(None, torch_seed=7)
    b = _trained(None, torch_seed=7)
    assert not any(torch.equal(x, y) for x, y in zip(a, b))


def test_training_leaves_torch_generator_untouched():
    model, opt, loader = _setup()
    pt = make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0)
    before = torch.get_rng_state()
    iter(loader)  # any DataLoader epoch draws one worker base seed, nothing else
    expected = torch.get_rng_state()
    assert not torch.equal(expected, before)
    torch.set_rng_state(before)
    _epoch(pt)
    assert pt.steps == 8
    assert torch.equal(torch.get_rng_state(), expected)


class _Counting:
    def __init__(self) -> None:
        self.inner, self.bytes = SystemSource(), 0

    def read(self, n: int) -> bytes:
        self.bytes += n
        return self.inner.read(n)


def test_every_draw_comes_from_the_default_secure_source(monkeypatch):
    counting = _Counting()
    monkeypatch.setattr(dpsgd, "default_source", lambda: counting)
    model, opt, loader = _setup()
    pt = make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0)
    _epoch(pt)
    sizes = [p.numel() for p in model.parameters()]  # weight 10, bias 2
    per_step = 8 * 256 + sum(16 * math.ceil(n / 2) for n in sizes)  # sampling + Box–Muller
    assert counting.bytes == pt.steps * per_step == 8 * per_step


def test_poisson_sampler_rate_and_range():
    sampler = SecurePoissonSampler(num_samples=1000, sample_rate=0.1, rng=_key(4), steps=200)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 200
    assert all(b == sorted(set(b)) and all(0 <= i < 1000 for i in b) for b in batches)
    mean = np.mean([len(b) for b in batches])
    assert abs(mean - 100) < 4  # s.d. of the mean is 0.67
    assert len(SecurePoissonSampler(num_samples=10, sample_rate=0.25, rng=_key(4))) == 4
    with pytest.raises(ConfigError, match="sample_rate"):
        SecurePoissonSampler(num_samples=10, sample_rate=0.0, rng=_key(4))
