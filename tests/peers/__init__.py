"""Tests against real peers: Kamailio, baresip, SIPp, Redis (started by tests/fixtures)."""
