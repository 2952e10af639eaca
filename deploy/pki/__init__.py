"""The consortium's public-key infrastructure: who may join, and how a silo proves it.

* :mod:`~deploy.pki.certs` — certificate and key primitives on ``cryptography``;
* :mod:`~deploy.pki.authority` — the coordinator operator's CA (:class:`Pki`): issue,
  approve, revoke, renew, CRL; with its :mod:`~deploy.pki.index` of issued certificates;
* :mod:`~deploy.pki.messages` — the enrollment request and the signed bundle (the two files
  that cross between a silo and the operator); :mod:`~deploy.pki.checks` — the input checks
  both sides run before anything is written (names, contacts, lifetimes, hosts);
* :mod:`~deploy.pki.enrollment` and :mod:`~deploy.pki.kit` — the silo's side: keys made on
  site, the member kit; :mod:`~deploy.pki.identity` — the coordinator a silo talks to (its
  live certificate, over :mod:`~deploy.pki.link`, the silo's own mTLS connection);
* :mod:`~deploy.pki.freshness` — nothing lapses silently: CRL renewal by the running
  coordinator, status warnings; :mod:`~deploy.pki.crl_sync` — a silo's copy of the CRL;
* :mod:`~deploy.pki.cli` — ``xsilo pki …`` and the silo's enrollment commands.
"""
