"""What a new user hit in the Python API: preset selectors under torch.compile and preset files
that cannot be read."""

import os
import random

import pytest

from helpers import psa, random_qkv, seed_from_env, torch

USER_PRESET = """
MyModel:
  default_attention: mine
  attention_configs:
    mine:
      type: psa
      description: DESCRIPTION
      block_size: {m: 64, n: 32, tile_n: 32}
      mask_mode: topk
"""


# ---- Presets under torch.compile --------------------------------------------------------------


@pytest.mark.parametrize("selector", ["Wan2.1_1.3b:psa_topk", "Wan2.1_1.3b:baseline",
                                      "CogVideo_5b"])
def test_preset_selector_traces_under_compile_fullgraph(selector):
    seed = seed_from_env(40000)
    q, k, v = random_qkv(seed, 1, 2, 2, 256, 256, 64)

    def step(q, k, v):
        return psa.attention(q, k, v, preset=selector)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(q, k, v), step(q, k, v))


def test_unknown_preset_selector_says_so_under_compile():
    q, k, v = random_qkv(1, 1, 1, 1, 64, 64, 32)

    def step(q, k, v):
        return psa.attention(q, k, v, preset="Wan2.1_1.3b:psa_nonexistent")

    # Dynamo reports the ValueError raised in traced code as its own error, message included.
    with pytest.raises(Exception, match="'Wan2.1_1.3b:psa_nonexistent' is not in the built-in"):
        torch.compile(step, fullgraph=True, backend="aot_eager")(q, k, v)


def test_selectors_resolve_to_cached_presets():
    assert psa.load_preset("Wan2.1_1.3b") is psa.load_preset("Wan2.1_1.3b:psa_balanced")
    assert psa.load_preset("Wan2.1_1.3b:") is psa.load_preset("Wan2.1_1.3b:psa_balanced")
    assert [psa.load_preset(s).selector for s in psa.list_presets()] == psa.list_presets()


# ---- Preset files that cannot be read ---------------------------------------------------------


def _user_file(tmp_path, description=b"a user's preset"):
    path = tmp_path / "mine.yaml"
    path.write_bytes(USER_PRESET.encode().replace(b"DESCRIPTION", description))
    return path


def test_preset_file_of_random_bytes_is_a_value_error_naming_it(tmp_path):
    path = tmp_path / "random.yaml"
    path.write_bytes(random.Random(seed_from_env(41000)).randbytes(300))
    with pytest.raises(ValueError, match=r"random\.yaml.*not UTF-8"):
        psa.list_presets(str(path))
    with pytest.raises(ValueError, match=r"random\.yaml.*not UTF-8"):
        psa.load_preset("MyModel", path=path)


def test_preset_file_with_a_latin1_string_is_a_value_error_naming_its_line(tmp_path):
    path = _user_file(tmp_path, description="caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"mine\.yaml.*not UTF-8.*line 7"):
        psa.load_preset("MyModel", path=path)


def test_preset_directory_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=rf"{tmp_path.name}.*cannot be read"):
        psa.list_presets(str(tmp_path))


def test_preset_paths_may_be_bytes_or_path_objects(tmp_path):
    path = _user_file(tmp_path)
    for form in (str(path), path, os.fsencode(path)):
        assert psa.load_preset("MyModel", path=form).config.block_m == 64
        assert psa.list_presets(form) == ["MyModel:mine"]
    with pytest.raises(ValueError, match=r"missing\.yaml.*cannot be read"):
        psa.list_presets(os.fsencode(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="path must be"):
        psa.list_presets(7)
