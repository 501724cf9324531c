"""Test suite of sipdialer (a package so that ``tests.fixtures`` imports from the rootdir)."""
