"""`xsilo demo` (what `make demo` runs) as a newcomer sees it: the real CLI, three hospitals
over mTLS gateways and node auth with secure aggregation, the per-round table and the
federated / centralized / local-only comparison, exit 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

XSILO = str(Path(sys.executable).parent / "xsilo")


def test_demo_trains_compares_and_exits_zero(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    proc = subprocess.run([XSILO, "demo", "--workdir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=170, env=env,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "Traceback" not in out + proc.stderr
    for label in ("federated (xsilo, 3 hospitals)", "centralized (pooled data)",
                  "hospital-a alone", "hospital-b alone", "hospital-c alone"):
        assert label in out, label
    gap = re.search(r"federated − centralized = ([+-]\d+\.\d+) points", out)
    assert gap is not None, out[-3000:]
    assert abs(float(gap.group(1))) <= 2.0, gap.group(0)  # the bar: within 2 points
    federated = re.search(r"federated \(xsilo, 3 hospitals\)[\s│|]+(\d\.\d{4})", out)
    assert federated is not None and float(federated.group(1)) > 0.9
