"""examples/train_lora.py as a user runs it: LoRA fine-tuning of a small Wan 2.1 transformer with
PSA in the loop lowers the flow-matching loss, reads a folder of clips, and saves adapters that
diffusers loads back."""

import importlib.util
import math
import os
import re
import subprocess
import sys

import pytest

from helpers import needs_cuda_backward, torch

diffusers = pytest.importorskip("diffusers", reason="the example needs diffusers")
pytest.importorskip("peft", reason="the example needs peft")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "train_lora.py")
LAST_LINE = re.compile(r"loss first=(\S+) last=(\S+)")
# The CPU run takes ~15 s on 2 idle cores; CI machines are shared, so the limit is generous.
TIMEOUT_S = 600


def _run(*args):
    result = subprocess.run([sys.executable, EXAMPLE, *args], capture_output=True, text=True,
                            timeout=TIMEOUT_S, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return result.stdout.strip().splitlines()


def _losses(lines):
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, f"last line is not `loss first=<a> last=<b>`: {lines[-1]!r}"
    first, last = float(match[1]), float(match[2])
    assert math.isfinite(first) and math.isfinite(last) and first > 0
    return first, last


def _example_module():
    spec = importlib.util.spec_from_file_location("train_lora", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_lowers_the_loss():
    """The command CI runs, as the docs give it."""
    lines = _run("--tiny", "--device", "cpu", "--steps", "30")
    first, last = _losses(lines)
    assert last < first, lines[-1]
    # PSA ran in both blocks at every step, and nothing fell back to the model's attention.
    assert "PSA attention calls: 60 (2 per step), handed to the model's own attention: 0" in lines


def test_data_folder_and_saved_adapters(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = tmp_path / "clips"
    data.mkdir()
    for i in range(2):
        clip = {"latents": torch.randn(4, 3, 16, 16, generator=g),
                "text_embeds": torch.randn(16, 32, generator=g)}
        torch.save(clip, data / f"clip{i}.pt")
    from safetensors.torch import save_file
    save_file({"latents": torch.randn(4, 3, 16, 16, generator=g),
               "text_embeds": torch.randn(16, 32, generator=g)}, str(data / "clip2.safetensors"))
    out = tmp_path / "lora"
    lines = _run("--tiny", "--device", "cpu", "--steps", "4", "--data", str(data),
                 "--gradient-checkpointing", "--output", str(out))
    _losses(lines)
    assert "3 clips, latents (4, 3, 16, 16), 192 tokens per clip" in lines[0]
    # Checkpointing recomputes every block: 2 forward + 2 recomputed PSA calls per step.
    assert "PSA attention calls: 16 (4 per step), handed to the model's own attention: 0" in lines

    module = _example_module()
    transformer = module.build_transformer(module.parse_args(["--tiny", "--device", "cpu"]),
                                           torch.float32)
    transformer.load_lora_adapter(str(out / "pytorch_lora_weights.safetensors"),
                                  prefix="transformer")
    lora = [p for name, p in transformer.named_parameters() if "lora_B" in name]
    # 2 blocks x 2 attentions x (q, k, v, out): every adapter trained away from its zero init.
    assert len(lora) == 16 and all(p.norm() > 0 for p in lora)


def test_bad_clip_names_the_file(tmp_path):
    module = _example_module()
    path = tmp_path / "clip.pt"
    torch.save({"latents": torch.randn(4, 3, 16, 16)}, path)
    with pytest.raises(ValueError, match=r"clip\.pt: missing text_embeds"):
        module.FolderClips(str(tmp_path))[0]


@needs_cuda_backward
def test_tiny_cuda_run_lowers_the_loss():
    """bf16 on the GPU: PSA's CUDA forward and backward in the loop."""
    lines = _run("--tiny", "--device", "cuda", "--steps", "30")
    first, last = _losses(lines)
    assert last < first, lines[-1]
    assert "PSA attention calls: 60 (2 per step), handed to the model's own attention: 0" in lines
