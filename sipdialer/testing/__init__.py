"""Simulated peers that speak real SIP, RTP and Redis over loopback, in-process.

Used by ``sipdialer demo`` (a call end to end without a trunk, phones or Redis) and by the
test suite:

* :mod:`~sipdialer.testing.sim_trunk` — :class:`SimTrunk`, a small registrar with digest
  authentication and a stateless proxy (RFC 3261 §16.11) that routes by Request-URI user;
* :mod:`~sipdialer.testing.sim_phone` — :class:`SimPhone`, a phone on our own SIP stack
  that registers, rings, answers (or is busy, or never answers), sends a sine tone as
  20 ms G.711 RTP packets and hangs up when told to;
* :mod:`~sipdialer.testing.tone_rtp` — :class:`ToneRtp`, the phone's RTP socket;
* :mod:`~sipdialer.testing.redis_standin` — :class:`RedisStandIn`, a RESP2 server with the
  list commands the notifier and a BRPOP client use;
* :mod:`~sipdialer.testing.ports` — free loopback ports.

Nothing here is used by ``sipdialer serve``.
"""
