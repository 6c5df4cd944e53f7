"""Locate the compiled extension npdg._C (placeholder until the extension lands: reports unavailable)."""


def available() -> bool:
    return False
