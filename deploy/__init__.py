"""deploy: PKI, member kits, TLS gateways and process launchers.

This package's root stays import-free: silo configuration reads :data:`EXECUTORS` on every
message, without loading the launchers.
"""

# How a silo's SuperNode runs ClientApps ([silo] executor); the first is the default.
# "warm": xsilo's SuperExec (deploy.executor); "flower": Flower's own.
EXECUTORS = ("warm", "flower")
