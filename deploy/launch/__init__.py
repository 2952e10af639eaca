"""Flower's own processes: :mod:`~deploy.launch.processes` starts, watches and stops the
SuperLink, SuperNodes and ``flwr`` CLI calls; :mod:`~deploy.launch.executor` (with
:mod:`~deploy.launch.warm`) is the silo's SuperExec that forks ClientApp processes warm,
each running :mod:`~deploy.launch.runner` (the app that answers is the silo's choice);
:mod:`~deploy.launch.fab` builds and hashes app bundles, the xsilo run stub
(``flower_app/``) among them."""
