"""The roof of the house: the ``xsilo`` command and whole federations on one machine.

* :mod:`~federation.cli` — the ``xsilo`` CLI root (each package mounts its own commands);
* :mod:`~federation.local` — a run in one process or on Flower's Ray simulation engine;
* :mod:`~federation.deployment` — a complete federation on real Flower processes
  (CA, coordinator, silos, TLS) on loopback, used by the demo and the end-to-end tests;
* :mod:`~federation.demo` (and its data, :mod:`~federation.demo_data`) — ``xsilo demo``.

Everything here may import every other package; nothing imports this one.
"""
