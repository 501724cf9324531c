"""Test suite of sipdialer (a package so that ``tests.peers`` imports from the rootdir)."""
