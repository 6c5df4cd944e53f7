"""Every Config field is read somewhere: a key that no code path reads is a setting that silently does nothing."""

import dataclasses
import re
from pathlib import Path

import pytest

from npdg.config import Config

NPDG = Path(__file__).resolve().parents[1] / "npdg"

# Fields consumed only by npdg/config.py's own logic (excluded from the search below), each with the reason.
CONFIG_ONLY = {
    "preset": "load_config() applies PRESET_DIR/<preset>.yaml before the file and the overrides",
}


def _sources() -> str:
    return "\n".join(p.read_text() for p in sorted(NPDG.rglob("*.py")) if p != NPDG / "config.py")


def _read(name: str, text: str) -> bool:
    """``cfg.NAME`` / ``self.cfg.NAME`` / ``config.NAME``, ``cfg["NAME"]`` or ``getattr(cfg, "NAME")``."""
    patterns = (rf"\b(?:cfg|config)\.{name}\b", rf"\b(?:cfg|config)\[\s*['\"]{name}['\"]\s*\]",
                rf"getattr\(\s*(?:self\.)?(?:cfg|config)\s*,\s*['\"]{name}['\"]")
    return any(re.search(p, text) for p in patterns)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Config)])
def test_every_config_field_is_read(name):
    if name in CONFIG_ONLY:
        assert re.search(rf"\bcfg\.{name}\b", (NPDG / "config.py").read_text()), f"{name}: allow-listed but unused"
        return
    assert _read(name, _sources()), (
        f"Config.{name} is read by no code path under npdg/ (outside config.py): the key does nothing; "
        "use it, remove it, or add it to CONFIG_ONLY with the reason")


def test_the_search_finds_reads():
    assert _read("iters", "x = self.cfg.iters + 1")
    assert _read("lam", 'v = cfg["lam"]')
    assert _read("lam", 'getattr(cfg, "lam")')
    assert not _read("iters", "cfg.iters_total")
    assert not _read("amp", "# amp: bool = False")
