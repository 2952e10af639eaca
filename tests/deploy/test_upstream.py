"""deploy.gateway.upstream: what a silo gateway's nginx says about the coordinator, turned
into cause and fix; and the supervisor of `xsilo silo start` saying it as it happens.

The log lines are nginx 1.22's own (``tests/deploy/test_gateway.py`` produces the name
mismatch for real and checks the handle's reading of it)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy.gateway.upstream import UpstreamWatch, explain_upstream, unresolved_upstream
from silo_client.supervise import Supervisor
from xsilo.errors import DeploymentError

TAIL = (', client: unix:, server: , request: "POST /v1/fleet/activate-node HTTP/1.1", '
        'upstream: "https://198.18.1.1:8443/v1/fleet/activate-node", host: "127.0.0.1:9443"')
LINES = {
    "name": '2026/01/05 10:00:00 [error] 7#7: *1 upstream SSL certificate does not match '
            '"coord.xsilo.test" while SSL handshaking to upstream' + TAIL,
    "revoked": '2026/01/05 10:00:00 [error] 7#7: *1 upstream SSL certificate verify error: '
               '(23:certificate revoked) while SSL handshaking to upstream' + TAIL,
    "crl": '2026/01/05 10:00:00 [error] 7#7: *1 upstream SSL certificate verify error: '
           '(12:CRL has expired) while SSL handshaking to upstream' + TAIL,
    "verify-21": '2026/01/05 10:00:00 [error] 7#7: *1 upstream SSL certificate verify error: '
                 '(21:unable to verify the first certificate) while SSL handshaking to '
                 'upstream' + TAIL,
    "connect-111": '2026/01/05 10:00:00 [error] 7#7: *1 connect() failed (111: Connection '
                   'refused) while connecting to upstream' + TAIL,
    "timeout": '2026/01/05 10:00:00 [error] 7#7: *1 upstream timed out (110: Connection timed '
               'out) while connecting to upstream' + TAIL,
}
KIT = {"coordinator": "coord.xsilo.test:8443", "server_name": "coord.xsilo.test"}


@pytest.mark.parametrize("cause", sorted(LINES))
def test_each_upstream_failure_names_cause_and_fix(cause: str) -> None:
    found = explain_upstream(LINES[cause], **KIT)
    assert found is not None and found[0] == cause
    sentence = found[1]
    assert "198.18.1.1:8443" in sentence or cause == "crl"  # where nginx actually went
    fixes = {"name": "xsilo pki issue-coordinator --host coord.xsilo.test",
             "revoked": "xsilo pki issue-coordinator", "crl": "xsilo pki crl",
             "verify-21": "getent hosts coord.xsilo.test", "connect-111": "nothing listens",
             "timeout": "firewall"}
    assert fixes[cause] in sentence, sentence


def test_other_lines_are_not_read_as_causes() -> None:
    for line in ("2026/01/05 10:00:00 [notice] 7#7: signal process started",
                 '2026/01/05 10:00:00 [error] 7#7: *9 no live upstreams while connecting to '
                 'upstream' + TAIL, ""):
        assert explain_upstream(line, **KIT) is None


def test_a_name_nginx_cannot_resolve_names_the_fix() -> None:
    said = unresolved_upstream('nginx: [emerg] host not found in upstream "coord.xsilo.test:8443"'
                               ' in /kit/gateway/run/conf/nginx.conf:52\n')
    assert said is not None
    assert "cannot resolve the coordinator's name 'coord.xsilo.test'" in said
    assert "/etc/hosts" in said and "getent hosts coord.xsilo.test" in said
    assert unresolved_upstream("nginx: [emerg] unknown directive \"x\"") is None


def test_the_watch_says_each_cause_once_then_again_later(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    log.write_text(LINES["name"] + "\n")  # before the watch: an earlier start's, not ours
    now = [0.0]
    watch = UpstreamWatch(log, clock=lambda: now[0], repeat_after=600, **KIT)
    assert watch.poll() == [] and watch.last is None
    with log.open("a") as fh:
        fh.write(LINES["name"] + "\n" + LINES["name"] + "\n" + LINES["connect-111"][:40])
    first = watch.poll()  # the half-written line waits for its end
    assert len(first) == 1 and "does not carry the name" in first[0]
    with log.open("a") as fh:
        fh.write(LINES["connect-111"][40:] + "\n" + LINES["name"] + "\n")
    assert [s[:40] for s in watch.poll()] == [explain_upstream(LINES["connect-111"], **KIT)[1][:40]]
    now[0] = 601.0
    with log.open("a") as fh:
        fh.write(LINES["name"] + "\n")
    assert len(watch.poll()) == 1 and "does not carry the name" in watch.last


class Gateway:
    """A silo gateway as the supervisor sees it: reload, and what its error.log says."""

    def __init__(self, watch: UpstreamWatch) -> None:
        self.upstream = watch

    def reload(self) -> None:
        pass

    def upstream_problems(self) -> list[str]:
        return self.upstream.poll()


class Node:
    pid, log_path = 1, Path("/log/1")

    def __init__(self) -> None:
        self.failure = ""

    def raise_if_exited(self) -> None:
        if self.failure:
            raise DeploymentError(self.failure)

    def stop(self) -> None:
        self.failure = ""


def test_the_supervisor_says_the_gateways_cause_and_names_it_when_the_node_gives_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "error.log"
    log.write_text("")
    silo = SimpleNamespace(supernode=Node(), gateway=Gateway(UpstreamWatch(log, **KIT)))
    config = SimpleNamespace(path=tmp_path / "silo.toml", name="hospital-a")  # no kit here
    sup = Supervisor(config, silo, say=lambda _: None,  # type: ignore[arg-type]
                     start=lambda cfg: Node(), refresh=lambda *a, **k: None)
    with caplog.at_level(logging.WARNING):
        log.write_text(LINES["name"] + "\n")
        sup.step()
        assert "silo hospital-a: the certificate of the coordinator gateway at 198.18.1.1:8443 " \
               "does not carry the name 'coord.xsilo.test'" in caplog.text
        caplog.clear()
        silo.supernode.failure = "flower-supernode (pid 1) lost its connection for good: the " \
                                 "coordinator could not be reached"
        sup.step()
    assert "The silo gateway's error.log says: the certificate of the coordinator gateway" \
        in caplog.text  # the restart warning names the real cause
