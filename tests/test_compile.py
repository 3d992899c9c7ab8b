"""--compile: torch.compile of the U-Net (core.models.compile_unet) changes neither results nor weight names."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import micro_options
from core.models import LGM, compile_unet
from core.weights import load_weights


def run_compiled(fn):
    """``fn()``, or a skip when torch.compile cannot run on this platform (no working C++ compiler)."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    try:
        return fn()
    except BackendCompilerFailed as e:
        inner = getattr(e, "inner_exception", None)
        if isinstance(inner, (InvalidCxxCompiler, CppCompileError)):
            pytest.skip(f"torch.compile cannot build kernels here: {type(inner).__name__}: {str(inner)[:200]}")
        raise


def test_compile_unet_keeps_state_dict_names():
    """Compiling changes no name: the published layout (unet.*, conv.*), no '_orig_mod.' (compiles lazily: no kernel is built)."""
    model = LGM(micro_options())
    names = list(model.state_dict())
    assert compile_unet(model) is model
    assert list(model.state_dict()) == names
    assert all(n.startswith(("unet.", "conv.")) for n in names)
    assert dict(model.named_parameters()).keys() == dict(LGM(micro_options()).named_parameters()).keys()


@pytest.mark.slow
def test_compiled_unet_matches_eager_and_its_checkpoints_load_into_an_eager_model(tmp_path):
    """One small input: training forward + backward (with activation checkpointing) and inference
    forward agree with the eager model; the checkpoint training writes from the compiled model (via
    accelerate's save_state) and the exported weights load strictly into a fresh eager LGM."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from core.training import export_weights, save_checkpoint

    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python / platform")
    torch._dynamo.reset()  # compiled graphs of earlier tests do not count against the recompile limit
    opt = micro_options(layers_per_block=1, grad_checkpoint=True)  # fewer ops to compile; checkpointing compiled too
    torch.manual_seed(0)
    eager = LGM(opt).train()
    compiled = LGM(opt).train()
    compiled.load_state_dict(eager.state_dict())
    compile_unet(compiled)
    x = torch.randn(1, 4, 9, opt.input_size, opt.input_size)

    def train_step(model):
        model.zero_grad(set_to_none=True)
        g = model.forward_gaussians(x)
        g.square().mean().backward()
        return g.detach(), [p.grad for p in model.parameters()]

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got, got_grads = run_compiled(lambda: train_step(compiled))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs, "the U-Net ran eagerly, not compiled"
    want, want_grads = train_step(eager)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    scale = max(g.abs().max() for g in want_grads)
    assert max((a - b).abs().max() for a, b in zip(got_grads, want_grads)) <= 1e-4 * scale

    for m in (eager, compiled):
        m.eval()
    with torch.no_grad():  # another graph: eval mode, no grad (the U-Net's path without checkpointing)
        torch.testing.assert_close(run_compiled(lambda: compiled.forward_gaussians(x)), eager.forward_gaussians(x),
                                   atol=1e-4, rtol=1e-4)

    names = list(eager.state_dict())
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        acc = Accelerator(cpu=True)
        prepared = acc.prepare(compiled)
        ckpt = save_checkpoint(acc, tmp_path, 1, {"step": 1}, keep_last=1)
        export_weights(acc.unwrap_model(prepared), None, tmp_path)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    saved = sorted(ckpt.glob("model*.safetensors"))
    assert len(saved) == 1, saved
    for path in (saved[0], tmp_path / "model.safetensors"):
        assert sorted(load_file(str(path))) == sorted(names)  # no '_orig_mod.' anywhere
        fresh = LGM(opt).eval()
        report = load_weights(fresh, path, strict=True)
        assert report.complete
        with torch.no_grad():
            torch.testing.assert_close(fresh.forward_gaussians(x), eager.forward_gaussians(x), atol=0, rtol=0)


def test_infer_refuses_compile_with_sequential_offload(capsys):
    import infer

    assert infer.main(["--views", "none.png", "--compile", "--offload", "sequential"]) == 2
    assert "--compile and --offload sequential do not go together" in capsys.readouterr().err
