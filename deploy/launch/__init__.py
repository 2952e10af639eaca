"""Flower's own processes: :mod:`~deploy.launch.processes` starts, watches and stops the
SuperLink, SuperNodes and ``flwr`` CLI calls; :mod:`~deploy.launch.executor` (with
:mod:`~deploy.launch.warm`) is the silo's SuperExec that forks ClientApp processes warm."""
