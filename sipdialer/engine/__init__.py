"""The call engine: the two-leg ``Call`` machine, legs, SIP->Q.850 causes, CDRs, the
dialer that runs calls, and the rules of a call request."""
