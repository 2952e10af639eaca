"""The nginx mutual-TLS gateways: :mod:`~deploy.gateway.conf` renders their configuration
(pure functions), :mod:`~deploy.gateway.nginx` runs them (one unprivileged, foreground nginx
per prefix) and :mod:`~deploy.gateway.reload` tells when a reload is in force;
:mod:`~deploy.gateway.netns` puts the SuperLink behind them in a network namespace of its
own, which :mod:`~deploy.gateway.bridge` joins to the coordinator gateway by a unix socket,
and a silo's SuperNode in one of its own, whose :mod:`~deploy.gateway.uplink` reaches the
silo gateway's unix socket; :mod:`~deploy.gateway.upstream` reads why a silo gateway cannot
reach the coordinator."""
