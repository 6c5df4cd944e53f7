"""erm: empirical risk minimisation, the cross-entropy of the source batch (the base interface's defaults)."""

from npdg.methods.base import Method


class ERM(Method):
    pass
