"""psa: Pyramid Sparse Attention for video transformers.

    import psa
    out = psa.attention(q, k, v, preset="Wan2.1_1.3b:psa_balanced")   # (B, H, L, D) tensors
    plan = psa.plan(q, k, psa.Config(block_n=128))                     # inspect, then reuse
    out = psa.attention(q, k, v, plan=plan)

torch tensors (CPU or CUDA) go through torch custom ops with autograd and torch.compile support;
NumPy arrays go straight to the C++ library. psa.distributed.ulysses_attention spreads one call
over the ranks of a torch.distributed group (sequence parallelism). See docs/python.md.
"""

try:
    from psa import _C
except ImportError as error:  # a source checkout without a build
    raise ImportError(
        "psa's compiled extension psa._C is missing; install the package with `pip install .` "
        f"from the repository root ({error})") from error

from psa.config import Config, Preset, default_config, list_presets, load_preset
from psa.functional import attention, dense_attention, plan, plan_from_levels
from psa.plan import LEVELS, Plan

__version__ = "0.1.0"

__all__ = [
    "Config",
    "LEVELS",
    "Plan",
    "PSAAttention",
    "Preset",
    "attention",
    "cuda_available",
    "cuda_backward_available",
    "cuda_built",
    "default_config",
    "dense_attention",
    "list_presets",
    "load_preset",
    "plan",
    "plan_from_levels",
]


def cuda_built() -> bool:
    """Whether this build of psa has the CUDA backend. It says nothing about the machine: see
    cuda_available()."""
    return bool(_C.cuda_backend_built())


def cuda_available() -> bool:
    """Whether psa can run on CUDA tensors now: it was built with the CUDA backend and a device
    its kernels run on (compute capability 8.0 or newer) is present. The forward runs on every
    such device; the backward (training) on compute capability 9.0 (Hopper) only, see
    cuda_backward_available(). Earlier builds returned what cuda_built() returns, which is True
    on a machine without a GPU."""
    return bool(_C.cuda_device_usable()[0])


def cuda_backward_available(device_index: int = 0) -> bool:
    """Whether psa's attention backward (training) runs on CUDA device `device_index`: it needs
    compute capability 9.0 (Hopper) and PSA_FORCE_PORTABLE unset. Ampere and Ada cards (8.x) run
    the forward only; their backward raises NotImplementedError naming the card."""
    return bool(_C.cuda_backward_usable(device_index)[0])


def __getattr__(name):
    # PSAAttention needs torch; import it on first use so that NumPy-only installs still work.
    if name == "PSAAttention":
        from psa.modules import PSAAttention
        return PSAAttention
    raise AttributeError(f"module 'psa' has no attribute {name!r}")


try:
    import torch as _torch  # noqa: F401
except ImportError:
    pass
else:
    import psa.distributed  # noqa: F401  psa.distributed.ulysses_attention (sequence parallelism)
    import psa.ops  # noqa: F401  registers the torch.ops.psa custom ops
    from psa.modules import PSAAttention  # noqa: F811
