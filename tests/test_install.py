"""setup.py's torch lookup for pip's isolated build (nothing is built here)."""

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("npdg_setup_py", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # setup() itself only runs under __main__
    return mod


def test_probe_finds_this_interpreters_torch(setup_py):
    import torch

    torch_init, path = setup_py._probe(sys.executable)
    assert os.path.samefile(torch_init, torch.__file__)
    assert os.path.dirname(os.path.dirname(torch_init)) in path


def test_probe_of_a_missing_interpreter_is_none(setup_py, tmp_path):
    assert setup_py._probe(str(tmp_path / "no-python")) is None


def test_target_path_is_appended_only_where_missing(setup_py, tmp_path):
    site = tmp_path / "site-packages"
    (site / "torch").mkdir(parents=True)
    fake = (str(site / "torch" / "__init__.py"), [sys.path[-1], str(site), str(tmp_path / "gone"), ""])
    assert setup_py.find_target_torch_path("python", probe=lambda _: fake) == [str(site)]
    # torch's parent is added even when the interpreter's path did not list it
    assert setup_py.find_target_torch_path("python", probe=lambda _: (fake[0], [])) == [str(site)]


@pytest.mark.parametrize("found", [None, (None, ["/somewhere"])])
def test_no_torch_anywhere_gives_nothing_to_append(setup_py, found):
    assert setup_py.find_target_torch_path("python", probe=lambda _: found) == []


def test_no_torch_is_one_clear_error(setup_py, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError here
    monkeypatch.setattr(setup_py, "find_target_torch_path", lambda: [])
    monkeypatch.delenv("NPDG_NO_EXT", raising=False)
    with pytest.raises(SystemExit) as exc:
        setup_py._extensions()
    msg = str(exc.value)
    assert "needs PyTorch" in msg and "pip install torch==2.13.0" in msg and "Traceback" not in msg
    monkeypatch.setenv("NPDG_NO_EXT", "1")
    assert setup_py._extensions() == ([], {})


def test_ninja_from_the_python_package_when_not_on_path(setup_py, monkeypatch, tmp_path):
    monkeypatch.setattr(setup_py.shutil, "which", lambda _: None)
    monkeypatch.setitem(sys.modules, "ninja", type(sys)("ninja"))
    sys.modules["ninja"].BIN_DIR = str(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin")
    setup_py._ensure_ninja_on_path()
    assert os.environ["PATH"] == str(tmp_path) + os.pathsep + "/usr/bin"
