"""The worked example of docs/privacy.md: ``python -m strategies.dp.example``.

Five hospitals, secure-aggregation threshold t = 3, a 100,000-parameter model, C = 1,
z = 2, delta = 1e-5, max_epsilon = 8. Prints the figures quoted in the docs.
"""

from __future__ import annotations

from strategies.dp.accounting import Accountant, PrivacyBudget
from strategies.dp.config import DPConfig
from xsilo.errors import PrivacyBudgetExceeded

ROUNDS = (1, 5, 10, 20, 50)


def _eps_table(cfg: DPConfig, event, method: str) -> list[float]:
    acct = Accountant(cfg.delta, method)
    out = []
    for r in range(1, max(ROUNDS) + 1):
        acct.compose_round(event)
        if r in ROUNDS:
            out.append(acct.epsilon())
    return out


def _stop_round(cfg: DPConfig, event, method: str) -> int:
    acct, budget = Accountant(cfg.delta, method), PrivacyBudget(cfg.max_epsilon or 0.0, cfg.delta)
    for r in range(1, 1000):
        try:
            budget.check(acct, event, round_number=r)
        except PrivacyBudgetExceeded:
            return r
        acct.compose_round(event)
    return -1


def main() -> None:
    central = DPConfig(mechanism="central", noise_multiplier=2.0, clip_norm=1.0, max_epsilon=8.0)
    print("central: noise std on the sum =", central.sum_noise_stddev(clip_norm=1.0, num_silos=5))
    for method in ("pld", "rdp"):
        eps = _eps_table(central, central.round_event(), method)
        stop = _stop_round(central, central.round_event(), method)
        print(f"  {method}: eps after rounds {ROUNDS} =", [round(e, 3) for e in eps],
              f"; budget stop before round {stop}")
    adaptive = DPConfig(mechanism="central", noise_multiplier=2.0, clip_norm=0.1,
                        clipping="adaptive", max_epsilon=8.0)
    st = adaptive.adaptive_state(5)
    print(f"adaptive: sigma_b={st.count_stddev}, z_update={st.update_noise_multiplier(2.0):.4f}, "
          f"same eps as central (total z=2)")
    dist = DPConfig(mechanism="distributed", noise_multiplier=2.0, clip_norm=1.0, max_epsilon=8.0)
    cal = dist.ddg_params(num_silos=5, min_survivors=3, dimension=100_000).calibrate()
    print(f"distributed (32-bit modulus, k=6): padded_dim={cal.padded_dim}, "
          f"gamma={cal.granularity:.4g}, C/gamma={cal.scaled_clip:.6g}, "
          f"sigma_loc={float(cal.local_variance) ** 0.5:.6g}, Delta2={cal.l2_bound:.6g}, "
          f"rho={cal.rho:.6f}, z_eff={cal.effective_noise_multiplier:.6f}")
    print(f"  noise std (model units) with 3 / 5 survivors: {cal.noise_stddev(3):.4f} / "
          f"{cal.noise_stddev(5):.4f}; wrap bound per coordinate "
          f"{cal.wrap_probability_per_coordinate:.2e}, union {cal.wrap_probability_union:.2e}")
    ev = dist.round_event(cal)
    eps = _eps_table(dist, ev, "rdp")
    print(f"  rdp: eps after rounds {ROUNDS} =", [round(e, 3) for e in eps],
          f"; budget stop before round {_stop_round(dist, ev, 'rdp')}")


if __name__ == "__main__":
    main()
