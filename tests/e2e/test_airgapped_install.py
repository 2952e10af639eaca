"""Installing a silo on a host without internet, as docs/operations.md says: `make wheelhouse`
on a connected machine, then `pip install --no-index --find-links WHEELHOUSE xsilo` into a
fresh venv inside a network namespace with no network at all, and xsilo runs there.

Deviations from the documented commands, for time only: pip is told `--no-compile` (byte
compilation is two thirds of the install's time and changes nothing of what is resolved). The
wheelhouse comes from the package registry pip is configured with (its HTTP cache, when warm,
makes that fast); without one the test skips, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(280)]
ROOT = Path(__file__).resolve().parents[2]
_OFFLINE = re.compile(r"NewConnectionError|Max retries exceeded|Temporary failure in name "
                      r"resolution|Network is unreachable|No route to host|Could not fetch URL|"
                      r"ProxyError|SSLError|Connection refused|timed out", re.I)


def _netns_prefix() -> list[str]:
    """``unshare`` arguments for a namespace without network, or skip saying why not."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        pytest.skip("needs Linux with util-linux `unshare` for a network namespace")
    for prefix in (["unshare", "--net"], ["unshare", "--user", "--map-root-user", "--net"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("this account cannot create a network namespace (unshare --net, or an "
                "unprivileged user namespace): run as root, or allow user namespaces")


def test_wheelhouse_installs_and_runs_with_no_network(tmp_path: Path) -> None:
    netns = _netns_prefix()
    if shutil.which("make") is None:
        pytest.skip("needs `make` (the wheelhouse is built by `make wheelhouse`)")
    wheelhouse = tmp_path / "wheelhouse"
    built = subprocess.run(["make", "-C", str(ROOT), "wheelhouse", f"WHEELHOUSE={wheelhouse}"],
                           capture_output=True, text=True, timeout=200)
    log = built.stdout + built.stderr
    if built.returncode != 0 and _OFFLINE.search(log):
        pytest.skip(f"no package registry reachable to fill the wheelhouse: "
                    f"{_OFFLINE.search(log).group(0)}")  # type: ignore[union-attr]
    assert built.returncode == 0, log[-4000:]
    wheels = sorted(p.name for p in wheelhouse.glob("*.whl"))
    assert any(w.startswith("xsilo-") for w in wheels) and any(w.startswith("flwr-") for w in wheels)
    assert not list(wheelhouse.glob("*.tar.gz")), "an sdist would need a build on the target"
    check = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=wheelhouse,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # On the air-gapped host: nothing but the wheelhouse, no pip configuration, no network.
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
           "PIP_CONFIG_FILE": os.devnull, "LANG": "C.UTF-8",
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

    def offline(*argv: str, timeout: float = 180) -> str:
        out = subprocess.run([*netns, *argv], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=timeout)
        assert out.returncode == 0, f"{' '.join(argv)}:\n{out.stdout}\n{out.stderr}"[-4000:]
        return out.stdout

    offline(base, "-m", "venv", str(venv))
    offline(str(venv / "bin" / "pip"), "install", "--quiet", "--no-compile", "--no-index",
            "--find-links", str(wheelhouse), "xsilo")
    where = offline(str(venv / "bin" / "python"), "-c",
                    "import federation.cli, flwr; print(federation.cli.__file__)")
    assert where.strip().startswith(str(venv)), where  # the installed xsilo, not this checkout
    assert "coordinator" in offline(str(venv / "bin" / "xsilo"), "--help")
    assert "install-service" in offline(str(venv / "bin" / "xsilo"), "silo", "--help")
    installed = dict(line.split(": ", 1) for line in
                     offline(str(venv / "bin" / "xsilo"), "version").splitlines())
    from federation.version import versions

    here = versions()
    # a silo installed from the wheelhouse speaks to a coordinator installed from this tree
    for key in ("xsilo", "flwr", "secure-aggregation protocol", "default app sha256"):
        assert installed[key] == here[key], (key, installed, here)
