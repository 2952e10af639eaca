"""The SuperNode's poll on real processes, as the SuperLink's gateway sees it: right after a
silo answered it asks quickly (the next message is likely close), and once idle it asks at
Flower's own 3 s again. Each Fleet request a silo makes is in the coordinator gateway's
access log with its certificate subject and the time to the millisecond."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from federation.demo_data import write_demo_data
from federation.deployment import LocalFederation

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]
LINE = re.compile(r'"POST /v1/fleet/(?P<call>[a-z-]+) .* dn="[^"]*CN=(?P<silo>[^,"]+)'
                  r'.* msec=(?P<at>[0-9.]+)')
IDLE = 20.0  # s of silence after the run: the poll is back at 3 s within ~14 s


def _requests(access_log: Path) -> list[tuple[str, str, float]]:
    return [(m["silo"], m["call"], float(m["at"])) for m in
            map(LINE.search, access_log.read_text().splitlines()) if m]


def test_quick_after_an_answer_and_back_to_flowers_rate_when_idle(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path, mtls=True,
                          write_data=lambda root: write_demo_data(root)[:2]).setup()
    with fed:
        fed.start()
        outcome = fed.run(RunConfig(num_rounds=2, min_silos=2, expected_silos=2,
                                    round_timeout=30.0, join_timeout=40.0, name="poll"),
                          timeout=80)
        ended = time.time()
        time.sleep(IDLE)
        requests = _requests(fed.home_dir / "gateway" / "logs" / "access.log")
    assert outcome.completed, outcome.summary
    silos = sorted({silo for silo, _, _ in requests})
    assert len(silos) == 2, silos
    for silo in silos:
        pulls = [at for s, call, at in requests if s == silo and call == "pull-messages"]
        pushes = [at for s, call, at in requests if s == silo and call == "push-messages"]
        assert len(pushes) >= 4, pushes  # two rounds: train and evaluate each
        # right after an answer: several looks within a second (Flower's loop looks once
        # at once, then sleeps 3 s); fewer where the next message came at once
        soon = [sum(pushed < at <= pushed + 1.0 for at in pulls) for pushed in pushes]
        assert max(soon) >= 4 and sum(n >= 3 for n in soon) >= 2, (silo, soon)
        # idle: from 15 s after its last answer on, Flower's normal rate, no faster
        last = max(pushes)
        idle = [at for at in pulls if at >= last + 15.0]
        gaps = [b - a for a, b in zip(idle, idle[1:])]
        assert last < ended + 1 and len(idle) >= 1, (silo, last, ended, idle)
        assert all(gap >= 2.5 for gap in gaps), (silo, gaps)
        window = [at for at in pulls if last + 15.0 <= at <= last + IDLE]
        assert len(window) <= 3, (silo, window)  # ≤ one per 3 s over those seconds
