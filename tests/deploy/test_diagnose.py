"""deploy.launch.processes.diagnose: log tails seen from real Flower processes → one-line reasons."""

from __future__ import annotations

from deploy.launch.processes import diagnose

# flower-supernode 1.42 after the coordinator gateway answered 401 on activate-node
# (tests/e2e/test_deployment.py::test_mtls_unregistered_node_key_is_refused_with_a_clear_reason)
REFUSED_401 = """INFO :      Starting Flower SuperNode
INFO:     Uvicorn running on http://127.0.0.1:43269 (Press CTRL+C to quit)
INFO :      SuperNode terminated gracefully.
INFO:     Shutting down
INFO:     Finished server process [15225]"""

# constructed from the 400 path of flwr.supernode.fleet_http_connection (flwr_exit 305)
REVOKED_400 = """INFO :      Starting Flower SuperNode
ERROR :     Exit Code: 305
Failed to initialize the connection to the SuperLink.
Client error '400 Bad Request' for url 'https://127.0.0.1:40000/v1/fleet/activate-node'
INFO :      SuperNode terminated gracefully."""


# flower-supernode 1.42 refused on activate-node (HTTP 412): the SuperLink still counted an
# earlier SuperNode of this silo as connected (tests/e2e/test_deployment.py)
REFUSED_412 = """INFO :      Starting Flower SuperNode
ERROR :     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[code: 2004] Failed to activate SuperNode.
The SuperNode could not establish a connection to the SuperLink."""


def test_a_refused_activation_names_both_causes_the_wait_first() -> None:
    reason = diagnose(REFUSED_412)
    assert reason.index("still counts as connected") < reason.index("not registered")
    assert "up to a minute" in reason and "xsilo pki approve" in reason


def test_http_401_names_the_node_key_and_the_fix() -> None:
    for text in (REFUSED_401, "httpx.HTTPStatusError: Client error '401 Unauthorized' for url"):
        reason = diagnose(text)
        assert "refused this silo's node key (HTTP 401)" in reason
        assert "xsilo pki approve" in reason and "restart the silo" in reason


def test_a_certificate_refusal_is_not_read_as_a_401() -> None:
    assert "client certificate" in diagnose(REVOKED_400)
    assert diagnose("nothing recognisable") == "see its log"
