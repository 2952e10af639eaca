"""deploy: everything that runs a federation, in three concerns.

* :mod:`deploy.pki` — the consortium CA, certificates and node keys, enrollment requests and
  bundles, member kits (who may join, and how a silo proves it);
* :mod:`deploy.gateway` — the nginx mutual-TLS gateways in front of the SuperLink and of
  each SuperNode;
* :mod:`deploy.launch` — Flower's own processes (SuperLink, SuperNodes, ``flwr`` CLI) and
  the silo's warm SuperExec.

This package's root stays import-free: silo configuration reads :data:`EXECUTORS` on every
message, without loading the launchers.
"""

# How a silo's SuperNode runs ClientApps ([silo] executor); the first is the default.
# "warm": xsilo's SuperExec (deploy.launch.executor); "flower": Flower's own.
EXECUTORS = ("warm", "flower")
