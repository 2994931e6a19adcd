"""One C++ runtime per call: the extension's messages are built and its C++ standard library
symbols bound inside one libstdc++, also with PyTorch loaded first (docs/decisions.md, "One C++
runtime per call").

On the GPU machine (Python 3.12) std::ostringstream inside the extension once crashed the
interpreter. PyTorch loads NVIDIA's libcufile.so.0 into the process's global symbol scope, and that
library defines a few hundred C++ standard library symbols of its own (built with another
compiler): basic_ostringstream's constructors and the digit tables of std::to_string among them.
A reference of the extension resolves to the first definition in the global scope, so the
extension could run one compiler's copy of a stream on another's locale data. These tests run in
fresh interpreters, so that a crash fails a test (with the signal named) instead of ending pytest.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import psa

DATA = Path(__file__).resolve().parents[1] / "data" / "presets"
PACKAGE_DIR = Path(psa.__file__).resolve().parent

# The script run in a fresh interpreter: PyTorch first (as in a training script), then every kind
# of message the extension formats: numbers, shapes, DLPack codes, preset files parsed by yaml-cpp
# (whose streams run inside the extension's process too) and "%g" ratios.
_EXERCISE = textwrap.dedent("""
    import json, sys
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    import numpy as np
    import psa
    from psa import _C

    data = sys.argv[1]
    q = np.zeros((1, 2, 8, 64), np.float32)
    half = np.zeros((1, 2, 4, 64), np.complex64)
    whole = np.zeros((1, 2, 8, 64), np.complex64)
    cases = {
        "shape": lambda: psa.attention(q, np.zeros((1, 2, 8, 32), np.float32), q),
        "block": lambda: psa.Config(block_n=24),
        "stride": lambda: psa.attention(q[:, :, ::-1], q, q),
        "dtype": lambda: _C.build_pyramid([half] * 3, [half] * 3, whole, whole),
        "yaml": lambda: psa.list_presets(data + "/malformed.yaml"),
        "ratio": lambda: psa.list_presets(data + "/end_out_of_range.yaml"),
        "cosine": lambda: psa.list_presets(data + "/threshold_out_of_range.yaml"),
    }
    messages = {}
    for name, case in cases.items():
        try:
            case()
            messages[name] = None
        except ValueError as error:
            messages[name] = str(error)
    out = psa.attention(q + 1, q + 1, q + 1)
    messages["attention_ok"] = bool(np.isfinite(out).all())
    print(json.dumps(messages))
""")

_EXPECTED = {
    "shape": "k must have shape (B, Hkv, Lk, D) = (1, 2, 8, 64), got (1, 2, 8, 32)",
    "block": "config.block_n must be a power of two in [16, 256], got 24",
    "stride": "q has a negative stride -64 in dim 2",
    "dtype": "has a dtype psa does not support (DLPack code 5, 64 bits)",
    "yaml": "malformed.yaml:11: YAML syntax error",
    "ratio": "got [0.6, 1.2]",
    "cosine": "must be a cosine in [-1, 1], got 1.5",
}


def _env(**extra):
    # The child imports the psa this process imported.
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **extra)


def _run(tmp_path, **extra_env):
    result = subprocess.run([sys.executable, "-c", _EXERCISE, str(DATA)], cwd=tmp_path,
                            env=_env(**extra_env), capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        signal = f" (signal {-result.returncode})" if result.returncode < 0 else ""
        pytest.fail(f"the interpreter exited with {result.returncode}{signal}\n"
                    f"stderr:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_messages_in_a_fresh_interpreter(tmp_path):
    messages = _run(tmp_path)
    for name, expected in _EXPECTED.items():
        assert messages[name] is not None, f"case {name} raised no ValueError"
        assert expected in messages[name], f"case {name}: {messages[name]!r}"
    assert messages["attention_ok"]


# Where a psa object's references may bind: psa's own files, the C and C++ runtimes, the
# interpreter (the Python C API).
_RUNTIME = re.compile(r"(libstdc\+\+\.so\.6|libgcc_s\.so\.1|libc\.so\.6|libm\.so\.6|"
                      r"libdl\.so\.2|librt\.so\.1|libpthread\.so\.0|ld-linux-x86-64\.so\.2)$")
_BINDING = re.compile(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: normal symbol `([^']+)'")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads glibc's LD_DEBUG output")
@pytest.mark.slow
def test_extension_binds_to_one_cxx_runtime(tmp_path):
    """Every symbol psa's objects import binds to psa itself, the C/C++ runtime or the
    interpreter, never to a copy that another library (libcufile, libc10, ...) put in the global
    scope, and all C++ symbols come from one libstdc++ file. LD_BIND_NOW resolves every reference
    at load, after PyTorch (when installed) has filled the global scope."""
    log = tmp_path / "bindings"
    _run(tmp_path, LD_DEBUG="bindings", LD_DEBUG_OUTPUT=str(log), LD_BIND_NOW="1")
    interpreter = {Path(sys.executable).resolve().name}
    bindings = []
    for path in tmp_path.glob("bindings.*"):
        with open(path, errors="replace") as f:
            for line in f:
                if str(PACKAGE_DIR) not in line:
                    continue
                match = _BINDING.search(line)
                if match and Path(match.group(1)).resolve().parent == PACKAGE_DIR:
                    bindings.append((Path(match.group(1)).name, match.group(2), match.group(3)))
    assert bindings, f"no binding of an object in {PACKAGE_DIR} was logged"
    foreign, cxx_runtimes = [], set()
    for source, target, symbol in bindings:
        target_path = Path(target).resolve()
        name = Path(target).name
        if name.startswith("libstdc++"):
            cxx_runtimes.add(str(target_path))
        if target_path.parent == PACKAGE_DIR or _RUNTIME.search(name):
            continue
        if name.startswith("libpython") or target_path.name in interpreter:
            continue
        foreign.append(f"{source}: {symbol} -> {target}")
    assert not foreign, ("psa's objects bind symbols to another library's copies:\n" +
                         "\n".join(sorted(set(foreign))[:40]))
    assert len(cxx_runtimes) == 1, f"more than one C++ runtime: {sorted(cxx_runtimes)}"
