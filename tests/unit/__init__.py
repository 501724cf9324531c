"""Pure tests: no sockets, no processes beyond the package's own checkers, fake clocks."""
