"""Low-memory inference: models wait on the CPU and go to the GPU only while they run (``--offload``).

    offload = Offload("model", torch.device("cuda"))
    pipe = load_mv_pipeline(folder, "image", device, offload)     # core.generation: placed, not moved
    model = load_lgm(weights, device, offload=offload)

Modes (``OFFLOAD_MODES``):

``none``
    Every model on the compute device from loading on (the default; the fastest).
``model``
    Whole models move: a model goes to the compute device when it runs (its ``forward``, or an
    entry point that calls :func:`onload` first: the VAE's ``encode`` / ``decode`` through
    diffusers' ``apply_forward_hook``, LGM's ``forward_gaussians`` in ``core.generation``), and
    the model that ran before it goes back to storage first. One :class:`Offload` is shared by
    every model of a run (text and image encoders, U-Net, VAE, LGM, in the app both pipelines), so
    at most one of them is on the GPU at any time: the diffusion U-Net's weights during the
    denoising loop, LGM's during ``forward_gaussians`` and the exports that follow (the turntable
    and the mesh need the Gaussians, not LGM's weights, but moving LGM back is left to the next
    model that runs). As diffusers' ``enable_model_cpu_offload``, with one slot instead of its chain
    of previous-model hooks, under which a model that runs out of ``model_cpu_offload_seq`` order
    (ImageDream's VAE encoding the reference image, the text encoder again for the negative prompt)
    stays on the GPU beside the U-Net.
``sequential``
    Every submodule's weights are copied to the compute device only for its own ``forward`` and
    dropped after it (accelerate's ``cpu_offload``, as diffusers' ``enable_sequential_cpu_offload``):
    the lowest memory, the slowest (the U-Net's weights cross the bus at every denoising step).
    LGM too: its ~415M parameters cross once per object.

The compute and storage devices are parameters, so the whole machinery also runs with both on the
CPU, where nothing moves and the results are those of ``none`` (the tests drive it that way, and
``infer.py --device cpu --offload model`` is harmless). Offloading moves weights and never changes
an operation: on the CPU the outputs are bitwise those of ``none`` (tested); on a GPU the same
kernels run on the same data (the ``gpu`` test allows for nondeterministic kernels).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from torch import nn

OffloadMode = Literal["none", "model", "sequential"]
OFFLOAD_MODES: tuple[str, ...] = ("none", "model", "sequential")


class Offload:
    """Where the models of one run live and when they move: see the module's docstring.

    mode: one of ``OFFLOAD_MODES``; compute: the device models run on; storage: where they wait
    (the CPU; with ``sequential``, where accelerate keeps the weights it copies from).
    ``moves`` logs every move of ``model`` mode as (name, "compute" | "storage"), also when both
    devices are the same and nothing actually moves (tests read it).
    """

    def __init__(self, mode: str = "none", compute: Union[str, torch.device] = "cpu",
                 storage: Union[str, torch.device] = "cpu"):
        if mode not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {mode!r}")
        self.mode = mode
        self.compute, self.storage = torch.device(compute), torch.device(storage)
        self.active: Optional[nn.Module] = None  # model mode: the model now on the compute device
        self.moves: list[tuple[str, str]] = []
        self.names: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"Offload({self.mode!r}, compute={self.compute}, storage={self.storage})"

    def describe(self) -> str:
        """One line for logs: what this mode does on these devices."""
        if self.mode == "none":
            return f"every model on {self.compute}"
        what = ("one whole model at a time" if self.mode == "model" else "each layer only while it runs")
        note = " (both on the CPU: nothing moves)" if self.compute == self.storage else ""
        return f"offload {self.mode}: {what} on {self.compute}, the rest waits on {self.storage}{note}"

    # ------------------------------------------------------------------ placing models

    def place(self, module: nn.Module, name: str) -> nn.Module:
        """Put ``module`` under this offload (its dtype is the caller's choice) and return it:
        ``none`` moves it to the compute device; ``model`` to storage, with a hook that brings it to
        the compute device when it runs; ``sequential`` keeps its weights on storage, each layer's
        copied to the compute device for that layer's forward."""
        self.names[id(module)] = name
        if self.mode == "none":
            return module.to(self.compute)
        if self.mode == "model":
            from accelerate.hooks import add_hook_to_module

            module.to(self.storage)
            add_hook_to_module(module, OnloadHook(self))  # replaces any hook a previous placement left
            return module
        from accelerate import cpu_offload

        # as diffusers' enable_sequential_cpu_offload: buffers wait with the weights when the module
        # holds parameters directly; otherwise they stay on the compute device (they are small)
        state = {k: v.to(self.storage) for k, v in module.state_dict().items()}
        return cpu_offload(module, self.compute, offload_buffers=len(module._parameters) > 0, state_dict=state)

    def place_pipeline(self, pipe):
        """:meth:`place` every ``nn.Module`` component of a diffusers pipeline (``pipe.components``:
        text and image encoders, U-Net, VAE), named by its key. -> pipe"""
        for key, module in pipe.components.items():
            if isinstance(module, nn.Module):
                self.place(module, key)
        return pipe

    # ------------------------------------------------------------------ model mode

    def onload(self, module: nn.Module) -> None:
        """``model`` mode: ``module`` to the compute device, the model there before it back to storage."""
        if self.active is module:
            return
        self.offload_all()
        module.to(self.compute)
        self.moves.append((self.name(module), "compute"))
        self.active = module

    def offload_all(self) -> None:
        """``model`` mode: the model on the compute device (if any) back to storage."""
        if self.active is not None:
            self.active.to(self.storage)
            self.moves.append((self.name(self.active), "storage"))
            self.active = None
            if self.compute.type == "cuda":
                torch.cuda.empty_cache()  # the freed weights' blocks go back to the driver, not only to the cache

    def name(self, module: nn.Module) -> str:
        return self.names.get(id(module), type(module).__name__)


class OnloadHook:
    """The accelerate hook of ``model`` mode (``accelerate.hooks.ModelHook``'s methods, without
    importing accelerate before it is needed): before the module's forward, :meth:`Offload.onload`
    it and send the arguments to the compute device. ``execution_device`` is what diffusers'
    ``DiffusionPipeline._execution_device`` reads to put the pipeline's own tensors there."""

    no_grad = False

    def __init__(self, offload: Offload):
        self.offload = offload
        self.execution_device = offload.compute

    def init_hook(self, module):
        return module

    def pre_forward(self, module, *args, **kwargs):
        from accelerate.utils import send_to_device

        self.offload.onload(module)
        return send_to_device(args, self.offload.compute), send_to_device(kwargs, self.offload.compute)

    def post_forward(self, module, output):
        return output

    def detach_hook(self, module):
        return module


def onload(module: nn.Module) -> None:
    """Bring ``module`` to its compute device now when it is under ``model`` offload (for an entry
    point other than ``forward``, such as LGM's ``forward_gaussians``); nothing otherwise
    (under ``sequential`` each submodule's forward brings its own weights)."""
    hook = getattr(module, "_hf_hook", None)
    if isinstance(hook, OnloadHook):
        hook.offload.onload(module)


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: the execution device of its offload hooks (model or
    sequential), else the device of its first parameter (the CPU without parameters)."""
    for m in module.modules():
        device = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
