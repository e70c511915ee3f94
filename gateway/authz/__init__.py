"""Authorization: who may pass, decided per request from the client's verified identity.

* :mod:`gateway.authz.interfaces` — the contracts (:class:`IAuthorizer`, :class:`IAuthorizerType`)
  and the values they exchange (:class:`Decision`, :class:`RequestInfo`);
* :mod:`gateway.authz.builtin` — the built-in types ``cn``, ``san``, ``fingerprint``, ``any``;
* :mod:`gateway.authz.allowlist` — type ``file``: allowlist files, re-read when they change;
* :mod:`gateway.authz.remote` — type ``http``: asks an authorization service
  (:mod:`gateway.authz.remote_http`: what is sent and what the answer means);
* :mod:`gateway.authz.registry` — finds types through Twisted's plugin system and builds the
  configured authorizers;
* :mod:`gateway.authz.policy` — combines them (``policy = any | all``), failing closed, and runs
  ``shadow = yes`` rules beside them;
* :mod:`gateway.authz.rule` — ``type = expr``: ``all``/``any``/``not`` over named authorizers and
  matchers (:mod:`gateway.authz.expr` parses the rule, :mod:`gateway.authz.matchers` holds the
  matchers); :mod:`gateway.authz.outcome` checks and names what an authorizer returned;
* :mod:`gateway.authz.testing` — helpers for plugin authors' unit tests.
"""
