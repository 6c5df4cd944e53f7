"""Training methods: one class per method, one file each, behind one interface (:class:`npdg.methods.base.Method`).

    from npdg.methods import build_method, method_class
    method_class("sfp").prunes                # a method's facts and defaults (the config reads them)
    method = build_method(ctx, model)         # cfg.method's method for a run (npdg.train.Run calls its interface)

The registry maps a ``--method`` name to ``module:Class``; a class is imported on first use, so reading the
names (``npdg.config.METHODS``) imports nothing. A new method is a file here and a line below.
"""

from __future__ import annotations

import importlib

REGISTRY = {
    "erm": "npdg.methods.erm:ERM",
    "slimming": "npdg.methods.slimming:Slimming",
    "dsp": "npdg.methods.dsp:DSP",
    "npdg": "npdg.methods.npdg:NPDG",
    "sfp": "npdg.methods.sfp:SFP",
    "shade": "npdg.methods.shade:SHADE",
}


def method_class(name: str):
    """The class registered as ``name`` (KeyError for an unknown name; Config.validate names the valid ones)."""
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(ctx, model):
    """The method of ``ctx.cfg.method`` for a run on ``model``."""
    return method_class(ctx.cfg.method)(ctx, model)
