"""What a new user hit in the Python API: preset selectors under torch.compile, preset files that
cannot be read, arguments of the wrong type, and the CUDA availability checks."""

import os
import random

import numpy as np
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


def test_default_config_traces_under_compile_fullgraph():
    """psa.attention without config or preset (the plug-and-play default) in a fullgraph region:
    the default must not be read from the extension while dynamo traces."""
    seed = seed_from_env(40100)
    q, k, v = random_qkv(seed, 1, 2, 2, 256, 256, 64)

    def step(q, k, v):
        return psa.attention(q, k, v)

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


# ---- Argument types ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["no", 1, None, "False"])
def test_causal_must_be_a_bool(value):
    q, k, v = random_qkv(2, 1, 1, 1, 64, 64, 32)
    with pytest.raises(ValueError, match=r"causal must be a bool"):
        psa.attention(q, k, v, causal=value)
    with pytest.raises(ValueError, match=r"causal must be a bool"):
        psa.plan(q, k, causal=value)
    with pytest.raises(ValueError, match=r"causal must be a bool"):
        psa.dense_attention(q, k, v, causal=value)
    with pytest.raises(ValueError, match=r"return_lse must be a bool"):
        psa.attention(q, k, v, return_lse=value)


def test_numpy_and_torch_bools_are_bools():
    q, k, v = random_qkv(3, 1, 1, 1, 64, 64, 32)
    want = psa.attention(q, k, v, causal=True)
    assert torch.equal(psa.attention(q, k, v, causal=np.True_), want)
    assert torch.equal(psa.attention(q, k, v, causal=torch.tensor(True).item()), want)


@pytest.mark.parametrize("field,value", [
    ("samples_n", 10**12), ("samples_m", -2**40), ("block_m", 2**40), ("tile_n", 2**31),
    ("text_len", 2**63), ("seed", 2**64),
])
def test_out_of_range_ints_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"config\.{field}"):
        psa.Config(**{field: value})


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.complex64],
                         ids=["bool", "int32", "complex64"])
def test_non_floating_q_names_the_floating_dtypes(dtype):
    q, k, v = random_qkv(4, 1, 1, 1, 64, 64, 32)
    for args in ((q.to(dtype), k, v), (q.to(dtype).numpy(), k.numpy(), v.numpy())):
        with pytest.raises(ValueError, match=r"q must be a floating-point") as error:
            psa.attention(*args)
        # The floating dtypes psa computes in, not the integer ones of plans and level maps.
        assert "int64" not in str(error.value) and "uint8" not in str(error.value)
    with pytest.raises(ValueError, match=r"k must be a floating-point"):
        psa.plan(q, k.to(dtype))


def test_level_maps_may_have_any_strides():
    config = psa.Config(block_m=16, block_n=16, tile_n=16)
    levels = torch.tensor([1, 2, 4, 8, 0], dtype=torch.uint8)[
        torch.randint(0, 5, (2, 3, 5, 4), generator=torch.Generator().manual_seed(5))]
    levels[..., 0] = 1
    want = psa.plan_from_levels(levels, config, seq_q=80, seq_k=64)
    transposed = levels.transpose(2, 3).contiguous().transpose(2, 3)
    assert not transposed.is_contiguous()
    for strided in (transposed, transposed.to(torch.int64), transposed.numpy()):
        got = psa.plan_from_levels(strided, config, seq_q=80, seq_k=64)
        assert np.array_equal(np.asarray(got.levels), want.levels.numpy())
    broadcast = torch.ones(1, 1, 1, 1, dtype=torch.uint8).expand(2, 3, 5, 4)
    assert bool((psa.plan_from_levels(broadcast, config, seq_q=80, seq_k=64).levels == 1).all())


# ---- CUDA availability ------------------------------------------------------------------------


def test_cuda_built_and_cuda_available():
    assert psa.cuda_built() == psa._C.cuda_backend_built()
    # Usable now implies built; without a CUDA build nothing is usable.
    assert not psa.cuda_available() or psa.cuda_built()
    if not psa.cuda_built():
        assert not psa.cuda_available()
    # A usable device is one torch sees as well.
    if psa.cuda_available():
        assert torch.cuda.is_available()
