"""Bad inputs raise clear Python exceptions; configs validate; presets load as in SPEC.md."""

import numpy as np
import pytest

from helpers import psa, random_qkv, torch

CONFIG = psa.Config(block_m=64, block_n=32)


def _qkv(**kwargs):
    shape = dict(b=1, hq=2, hkv=2, lq=64, lk=64, d=32)
    shape.update(kwargs)
    return random_qkv(123, shape["b"], shape["hq"], shape["hkv"], shape["lq"], shape["lk"],
                      shape["d"])


def test_wrong_rank():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"q must have rank 4"):
        psa.attention(q[0], k, v, config=CONFIG)
    with pytest.raises(ValueError, match=r"k must have rank 4"):
        psa.plan(q, k[0], CONFIG)


def test_wrong_dtype():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"\bq\b"):
        psa.attention(q.to(torch.int32), k, v, config=CONFIG)
    with pytest.raises(ValueError):
        psa.attention(q, k.half(), v, config=CONFIG)


def test_mismatched_shapes():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"\bv\b"):
        psa.attention(q, k, v[:, :, :60], config=CONFIG)
    with pytest.raises(ValueError, match=r"\bk\b"):
        psa.attention(q, k[..., :16], v, config=CONFIG)
    q3, k3, v3 = _qkv(hq=3, hkv=2)
    with pytest.raises(ValueError):
        psa.attention(q3, k3, v3, config=CONFIG)


def test_mixed_array_kinds_and_devices():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="must all be torch tensors or all numpy arrays"):
        psa.attention(q, k.numpy(), v, config=CONFIG)
    with pytest.raises(ValueError, match="torch.Tensor or a numpy.ndarray"):
        psa.attention(q.tolist(), k, v)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="one device"):
            psa.attention(q.cuda(), k, v, config=CONFIG)


def test_negative_strides_are_refused():
    q, k, v = (t.numpy() for t in _qkv())
    with pytest.raises(ValueError, match="q has a negative stride"):
        psa.attention(q[:, :, ::-1], k, v, config=CONFIG)


def test_plan_does_not_fit():
    q, k, v = _qkv(lq=128, lk=128)
    plan = psa.plan(q, k, CONFIG)
    q2, k2, v2 = _qkv(lq=200, lk=128)
    with pytest.raises(ValueError, match=r"plan has shape"):
        psa.attention(q2, k2, v2, plan=plan)
    with pytest.raises(ValueError, match="either plan or config"):
        psa.attention(q, k, v, plan=plan, config=CONFIG)
    with pytest.raises(ValueError, match="both hold torch tensors or both numpy"):
        psa.attention(q.numpy(), k.numpy(), v.numpy(), plan=plan)


def test_bad_levels():
    with pytest.raises(ValueError, match=r"levels"):
        psa.plan_from_levels(torch.full((1, 1, 2, 2), 3, dtype=torch.uint8), CONFIG)
    with pytest.raises(ValueError, match=r"outside \[0, 8\]"):
        psa.plan_from_levels(torch.full((1, 1, 2, 2), 257, dtype=torch.int64), CONFIG)
    with pytest.raises(ValueError, match="integer dtype"):
        psa.plan_from_levels(np.ones((1, 1, 2, 2), dtype=np.float32), CONFIG)
    with pytest.raises(ValueError, match=r"shape \(B, Hq, Mq, Nk\)"):
        psa.plan_from_levels(torch.ones((2, 2, 2), dtype=torch.uint8), CONFIG)
    with pytest.raises(ValueError, match="does not match"):
        psa.plan_from_levels(torch.ones((1, 1, 2, 2), dtype=torch.uint8), CONFIG, seq_q=500)
    with pytest.raises(ValueError, match="sim_cap"):
        psa.plan_from_levels(torch.ones((1, 1, 2, 2), dtype=torch.uint8),
                             CONFIG.replace(sim_cap=True))


@pytest.mark.parametrize("field,value,pattern", [
    ("block_n", 48, r"config\.block_n"),
    ("block_m", 512, r"config\.block_m"),
    ("tile_n", 128, r"config\.tile_n"),
    ("ends", (0.5, 0.4, 0.6, 0.7), r"config\.ends"),
    ("ends", (0.1, 0.2, 0.3), r"config\.ends"),
    ("ends", (0.1, 0.2, 0.3, 1.5), r"config\.ends"),
    ("mode", "fastest", r"config\.mode"),
    ("text_position", "middle", r"config\.text_position"),
    ("text_len", -1, r"config\.text_len"),
    ("samples_m", 1000, r"config\.samples_m"),
    ("sim_thresholds", (0.7, 2.0, 0.5), r"config\.sim_thresholds"),
    ("softmax_scale", float("nan"), r"config\.softmax_scale"),
    ("causal", 1, r"config\.causal"),
    ("block_m", "128", r"config\.block_m"),
])
def test_invalid_config_names_the_field(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        psa.Config(**{field: value})


def test_config_round_trips():
    config = psa.Config(block_n=128, mode="ThresholdBound", ends=[0.4, 0.5, 0.6, 0.8], seed=7)
    assert config.mode == "thresholdbound" and config.ends == (0.4, 0.5, 0.6, 0.8)
    assert psa.Config.from_native(config.to_native()) == config
    assert psa.Config.from_key(config.key) == config
    assert hash(config) == hash(psa.Config.from_key(config.key))
    with pytest.raises(ValueError, match="no field"):
        config.replace(block_size=3)
    assert psa.default_config() == psa.Config()


def test_bad_scale():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="scale"):
        psa.attention(q, k, v, config=CONFIG, scale=-1.0)


# SPEC.md section 9: model, preset, n, mode, ends, rearrange, sim cap, warmup.
SPEC_PRESETS = [
    ("Wan2.1_14b:psa_balanced", 128, "thresholdbound", (.4, .5, .6, .8), "gilbert", False, 15),
    ("Wan2.1_1.3b:psa_balanced", 128, "thresholdbound", (.5, .6, .7, .8), "gilbert", True, 15),
    ("Wan2.1_1.3b:psa_topk", 32, "topk", (.05, .1, .15, .25), "gilbert", False, 15),
    ("Wan2.1_1.3b_4steps:psa_4steps", 128, "topk", (.05, .1, .1, .3), "gilbert", False, 0),
    ("Wan2.2_A14B:psa_balanced", 32, "thresholdbound", (.5, .6, .6, .8), "gilbert", False, 12),
    ("Wan2.2_5B:psa_balanced", 32, "thresholdbound", (.6, .7, .7, .8), "gilbert", False, 15),
    ("CogVideo1.5_5b:psa_balanced", 32, "topk", (.1, .15, .15, .35), "gilbert", False, 15),
    ("CogVideo_5b:psa_balanced", 128, "topk", (.1, .15, .15, .35), "none", False, 15),
    ("CogVideo_5b:psa_4steps", 128, "topk", (.05, .15, .25, .5), "none", False, 0),
]


@pytest.mark.parametrize("row", SPEC_PRESETS, ids=[r[0] for r in SPEC_PRESETS])
def test_builtin_presets_match_spec(row):
    selector, block_n, mode, ends, rearrange, sim, warmup = row
    preset = psa.load_preset(selector)
    assert preset.selector == selector
    assert preset.config.block_m == 128 and preset.config.tile_n == 32
    assert preset.config.block_n == block_n
    assert preset.config.mode == mode
    assert preset.config.ends == pytest.approx(ends)
    assert (preset.rearrange if preset.use_rearrange else "none") == rearrange
    assert preset.config.sim_cap == sim
    assert preset.warmup_steps == warmup


def test_preset_defaults_and_dense_baseline():
    assert psa.load_preset("Wan2.1_1.3b").name == "psa_balanced"
    assert psa.load_preset("Wan2.1_1.3b:baseline").dense
    assert psa.load_preset("Wan2.2_5B:psa_balanced").video_scale == (4, 32, 32)
    assert psa.load_preset("CogVideo_5b:psa_balanced").text_length == 226
    with pytest.raises(ValueError, match="not in the built-in presets"):
        psa.load_preset("Wan2.1_1.3b:psa_nonexistent")


USER_PRESETS = """
MyModel:
  default_attention: mine
  video_scale: {width_divisor: 8, height_divisor: 8, depth_divisor: 2}
  text_length: 0
  attention_configs:
    mine:
      type: psa
      description: a user's preset
      use_rearrange: false
      use_sim_mask: false
      block_size: {m: 64, n: 32, tile_n: 32}
      mask_ratios: {1: [0.0, 0.2], 2: [0.2, 0.3], 4: [0.3, 0.4], 8: [0.4, 0.6], 0: [0.6, 1.0]}
      mask_mode: topk
      attn_impl: new_mask_type
      warmup_steps: 3
"""


def test_user_preset_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(USER_PRESETS)
    preset = psa.load_preset("MyModel", path=str(path))
    assert preset.config.block_m == 64 and preset.config.block_n == 32
    assert preset.config.ends == pytest.approx((0.2, 0.3, 0.4, 0.6))
    assert preset.warmup_steps == 3
    assert psa.list_presets(str(path)) == ["MyModel:mine"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(USER_PRESETS.replace("mask_mode: topk", "mask_mode: topk\n      colour: red"))
    with pytest.raises(ValueError, match="colour"):
        psa.load_preset("MyModel", path=str(bad))
    with pytest.raises(ValueError, match="cannot be read"):
        psa.load_preset("MyModel", path=str(tmp_path / "missing.yaml"))
