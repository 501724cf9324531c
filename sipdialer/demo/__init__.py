"""``sipdialer demo`` and its simulated world (trunk, phones, Redis); imported only when the
demo is asked for, never by ``sipdialer serve``."""
