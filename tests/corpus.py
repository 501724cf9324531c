"""Where the RFC 4475 torture messages are: ``../shared/rfc4475`` beside the checkout.

Looked up, in order: ``$RFC4475_DIR``; ``shared/rfc4475`` beside the repository or any
of its parents (a clone in /tmp still finds /work/shared); ``/work/shared/rfc4475``.
Tests name the 49 files explicitly, so a missing corpus fails them (never an empty skip).
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _find() -> Path:
    if env := os.environ.get("RFC4475_DIR"):
        return Path(env)
    for parent in [_REPO, *_REPO.parents]:
        candidate = parent / "shared" / "rfc4475"
        if candidate.is_dir():
            return candidate
        candidate = parent.parent / "shared" / "rfc4475"
        if candidate.is_dir():
            return candidate
    return Path("/work/shared/rfc4475")


CORPUS = _find()

VALID = ["wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq",
         "semiuri", "transports", "mpart01", "unreason", "noreason"]  # fmt: skip
MUST_REFUSE = ["badinv01", "clerr", "ncl", "scalar02", "scalarlg", "quotbal", "ltgtruri",
               "lwsruri", "badvers", "mismatch01", "bigcode"]  # fmt: skip
MAY_ACCEPT = ["lwsstart", "trws", "escruri", "baddate", "regbadct", "badaspec", "baddn",
              "mismatch02"]  # fmt: skip
TRANSACTION = ["badbranch"]
APPLICATION = ["insuf", "unkscm", "novelsc", "unksm2", "bext01", "invut", "regaut01", "multi01",
               "mcl01", "bcast", "zeromf", "cparam01", "cparam02", "regescrt", "sdp01"]  # fmt: skip
COMPAT = ["inv2543"]
ALL = VALID + MUST_REFUSE + MAY_ACCEPT + TRANSACTION + APPLICATION + COMPAT


def load(name: str) -> bytes:
    return (CORPUS / f"{name}.dat").read_bytes()
