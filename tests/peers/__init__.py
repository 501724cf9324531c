"""Real SIP peers for tests: Redis, a Kamailio trunk, baresip phones and SIPp.

Each module owns one peer; ``tests/conftest.py`` wraps them in fixtures that stop
every process at teardown. All peers bind to 127.0.0.1 on free ports (see ports.py).
"""
