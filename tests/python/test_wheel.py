"""The wheel is self-contained: its extension needs nothing outside the wheel but the C/C++
runtime (and, in a CUDA build, the driver, which the statically linked CUDA runtime opens), and
the wheel installed into a fresh virtual environment imports and computes attention.

The wheel is $PSA_WHEEL (scripts/test.sh builds one per interpreter and passes it), or else one
built here from the source tree with this interpreter (incremental through the persistent build
folder; about a minute from scratch on 2 cores).
"""

import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# NEEDED entries allowed besides the libraries inside the wheel: glibc's libraries and the C++
# runtime, which every Linux system has. A CUDA runtime that PyTorch installs would be allowed
# too (the rule), though the wheel links its own statically.
_SYSTEM = {"libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
           "ld-linux-x86-64.so.2", "libstdc++.so.6", "libgcc_s.so.1"}
_CUDA_RUNTIME = re.compile(r"libcudart\.so\.\d+$")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the wheel checks read ELF files (Linux)")


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found (binutils / libc-bin)")
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    given = os.environ.get("PSA_WHEEL")
    if given:
        path = Path(given)
        assert path.is_file(), f"PSA_WHEEL={given} is not a file"
        return path
    for module in ("nanobind", "scikit_build_core"):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"building a wheel needs {module} (pip install {module}) or PSA_WHEEL")
    out = tmp_path_factory.mktemp("wheelhouse")
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
               "-w", str(out), str(REPO)]
    if shutil.which("nvidia-smi") is None:
        command.insert(4, "-Ccmake.define.PSA_CUDA=OFF")
    subprocess.run(command, check=True, timeout=1800)
    wheels = sorted(out.glob("psa-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, got {wheels}"
    return wheels[0]


def _dynamic(readelf, path):
    """(NEEDED entries, RPATH/RUNPATH entries) of an ELF file."""
    text = subprocess.run([readelf, "-d", str(path)], check=True, capture_output=True,
                          text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", text)
    paths = re.findall(r"\((?:RPATH|RUNPATH)\)\s+Library r(?:un)?path: \[([^\]]+)\]", text)
    return needed, [p for entry in paths for p in entry.split(":")]


def test_extension_needs_only_the_runtime(wheel, tmp_path):
    readelf = _tool("readelf")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
    package = tmp_path / "psa"
    extensions = sorted(package.glob("_C*.so"))
    assert len(extensions) == 1, f"expected one extension in {wheel.name}, got {extensions}"
    bundled = {p.name for p in package.iterdir() if ".so" in p.name} - {extensions[0].name}

    needed, search = _dynamic(readelf, extensions[0])
    assert needed, "the extension has no NEEDED entries: not a dynamic object?"
    outside = [n for n in needed if n not in _SYSTEM and n not in bundled
               and not _CUDA_RUNTIME.match(n)]
    assert not outside, (f"{extensions[0].name} needs {outside}, found neither in the wheel nor "
                         f"among the system runtime {sorted(_SYSTEM)}")
    if any(n in bundled for n in needed):
        assert "$ORIGIN" in search, f"bundled libraries need an $ORIGIN search path, got {search}"
    for name in bundled:
        inner, _ = _dynamic(readelf, package / name)
        assert set(inner) <= _SYSTEM, f"bundled {name} needs {sorted(set(inner) - _SYSTEM)}"

    nm = _tool("nm")
    exported = subprocess.run([nm, "-D", "--defined-only", str(extensions[0])], check=True,
                              capture_output=True, text=True).stdout
    symbols = [line.split()[-1] for line in exported.splitlines() if line.strip()]
    assert symbols == ["PyInit__C"], f"the extension exports more than its initialiser: {symbols}"


_SMOKE = textwrap.dedent("""
    import sys
    import numpy as np
    import psa
    assert psa.__file__.startswith(sys.prefix), (psa.__file__, sys.prefix)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 64, 64)).astype(np.float32) for _ in range(3))
    plan = psa.plan_from_levels(np.ones((1, 2, 1, 1), np.uint8), psa.Config(block_m=64,
                                                                           block_n=64))
    out = psa.attention(q, k, v, plan=plan)
    dense = psa.dense_attention(q, k, v)
    assert np.abs(dense).max() > 0
    assert np.abs(out - dense).max() < 1e-5, np.abs(out - dense).max()
    try:
        import torch
    except ImportError:
        print("ok numpy")
    else:
        t = torch.from_numpy(q).requires_grad_()
        psa.attention(t, t, t, plan=psa.plan_from_levels(torch.ones(1, 2, 1, 1, dtype=torch.uint8),
                      psa.Config(block_m=64, block_n=64))).sum().backward()
        assert torch.isfinite(t.grad).all() and t.grad.abs().max() > 0
        print("ok numpy torch")
""")


@pytest.mark.slow
def test_wheel_in_a_fresh_virtual_environment(wheel, tmp_path):
    """pip installs the wheel offline into a new venv (numpy, and torch where installed, from this
    interpreter's site packages); psa imports from the venv, its libraries resolve inside the wheel, and a tiny
    all-level-1 attention equals dense attention (fp32, exact up to summation order)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # numpy and torch from this interpreter's site packages (which may themselves be a venv's),
    # after the new venv's own: a .pth file, as --system-site-packages would reach only the base
    # interpreter's.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], check=True, capture_output=True, text=True,
                             env=env).stdout.strip()
    outer = [p for p in site.getsitepackages() if os.path.isdir(p)]
    Path(purelib, "outer_site_packages.pth").write_text("\n".join(outer) + "\n")
    # --ignore-installed: a psa in the system site packages must not count as installed.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--ignore-installed", "--disable-pip-version-check", str(wheel)],
                   check=True, env=env, timeout=300)
    result = subprocess.run([str(python), "-c", _SMOKE], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("ok numpy"), result.stdout

    ldd = shutil.which("ldd")
    if ldd is None:
        return
    extension = next((venv / "lib").glob("python*/site-packages/psa/_C*.so"))
    resolved = subprocess.run([ldd, str(extension)], check=True, capture_output=True,
                              text=True).stdout
    assert "not found" not in resolved, resolved
    for line in resolved.splitlines():
        if "libyaml-cpp" in line:
            assert str(extension.parent) in line, f"yaml-cpp resolves outside the wheel: {line}"
