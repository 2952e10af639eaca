"""The nginx mutual-TLS gateways: :mod:`~deploy.gateway.conf` renders their configuration
(pure functions), :mod:`~deploy.gateway.nginx` runs them (one unprivileged, foreground nginx
per prefix)."""
