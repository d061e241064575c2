"""Where a model computes: `--device auto|cpu|cuda|cuda:N`, resolved once, and the rule the inference code keeps.

The rule: a model lives on one device (`GTLoc.device`), and its encoders take their inputs from anywhere and compute
there. The model constants a photo is scored against (the cached location grid, the time grid, a GPS gallery) are
copied to that device once, so the matmuls against them, the surface upsampling, the exact refinements and the
normalisation run there too. Results cross back to the host (`host`) only where numpy takes over: credible-region
tracing, candidates, claims, GeoTIFFs and the GeoPackage. On the CPU every copy is a no-op, so CPU and GPU runs are
the same code path.

Inference runs under `torch.no_grad()`, not `torch.inference_mode()`: inference tensors cannot be viewed on lazy-tensor
backends (torch_xla, and torch's own TorchScript lazy backend, which the tests use as a second device that runs on
this machine's CPU to prove that nothing is left behind on the host), and on the CPU the two cost the same within
noise (a ViT-B/16 forward and the location encoder, measured 2026-12-02).

torch is imported where it is used: the CLI builds its parser from DEVICE_CHOICES without loading torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gtloc_engine.errors import GtlocError

if TYPE_CHECKING:
    import numpy as np
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")  # what --device accepts (documentation and help text)
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(name: str | None) -> torch.device:
    """'auto' (or None): the first CUDA device when torch sees one, else the CPU; 'cpu'; 'cuda' or 'cuda:N'.

    A CUDA device that is not there is one clear error, never a silent fall back to the CPU: a run that was asked
    for the GPU and took the CPU would take 50-100x longer without saying why."""
    import torch

    text = "auto" if name is None else str(name).strip().lower()
    if not _DEVICE_RE.match(text):
        raise GtlocError(f"device {name!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            raise GtlocError(f"device {text!r}: torch {torch.__version__} ({build}) sees no CUDA GPU on this "
                             "machine; use --device cpu (or auto), or run where an NVIDIA GPU and its driver are")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise GtlocError(f"device {text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        if device.index is None:  # named, so that logs and `info` say which GPU
            device = torch.device("cuda", torch.cuda.current_device())
    return device


_default: torch.device | None = None  # the process's device for models loaded without one; None: the CPU


def set_default_device(name: str | torch.device | None) -> torch.device:
    """Where models that are loaded without a device compute from now on in this process: the CLI's and the
    worker's `--device`, set once at start like set_cpu_threads (a runtime setting: checkpoints do not change)."""
    import torch

    global _default
    _default = name if isinstance(name, torch.device) else resolve_device(name)
    return _default


def default_device() -> torch.device:
    """The process's device (the CPU unless set_default_device said otherwise)."""
    import torch

    return torch.device("cpu") if _default is None else _default


def host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array on the host (a copy from a device; no copy from the CPU)."""
    return tensor.detach().cpu().numpy()


def on_device(values, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`values` (a numpy array, a list or a tensor) as a float32 (or `dtype`) tensor on `device`."""
    import torch

    return torch.as_tensor(values, dtype=torch.float32 if dtype is None else dtype, device=device)


def synchronize(device: torch.device) -> None:
    """Waits for the work queued on a GPU (a no-op elsewhere): a timed stage ends when its kernels do."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
