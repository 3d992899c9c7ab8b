"""--offload (core/offload.py): models wait on storage and visit the compute device only while they run.

On the CPU the compute and storage devices are both the CPU: nothing is copied, but every hook runs
(model mode logs each move it makes; sequential mode really keeps the weights out of the modules
between forwards, on the meta device), so these tests check the wiring and that the outputs are
bitwise those of ``none``. The memory saving itself needs CUDA: the ``gpu`` test at the end.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from conftest import micro_options
from core import generation as G
from core.gs import load_ply
from core.images import read_image
from core.offload import OFFLOAD_MODES, Offload, execution_device
from test_infer import PRESET, assets, offline, rgba_object  # noqa: F401  (fixtures: tiny ImageDream, LGM checkpoint, preset)

import infer

IMAGEDREAM_ORDER = ["text_encoder", "image_encoder", "vae", "text_encoder", "unet", "vae"]  # guidance > 1: negative prompt


def tiny_models(mode: str, compute="cpu", storage="cpu"):
    """A tiny random ImageDream pipeline and a micro LGM (the same weights at every call), placed by an Offload."""
    from core.models import LGM
    from core.mvdiffusion.tiny import build_tiny_pipeline

    offload = Offload(mode, compute, storage)
    pipe = offload.place_pipeline(build_tiny_pipeline(imagedream=True, seed=0))
    torch.manual_seed(1)
    lgm = offload.place(LGM(micro_options()).eval(), "lgm")
    return offload, pipe, lgm


def image_to_gaussians(pipe, lgm):
    image = G.prepare_input_image(rgba_object(), None, G.Settings())  # [256, 256, 3]
    views = G.generate_views(pipe, image=image, settings=G.Settings(steps=2), progress=False)  # [4, 256, 256, 3]
    return views, G.views_to_gaussians(lgm, views)  # [1, N, 14]


@pytest.fixture(scope="module")
def reference():
    """Views and Gaussians of the tiny models without offload."""
    _, pipe, lgm = tiny_models("none")
    return image_to_gaussians(pipe, lgm)


def test_model_offload_moves_one_whole_model_at_a_time_and_changes_nothing(reference):
    offload, pipe, lgm = tiny_models("model")
    assert execution_device(pipe.unet) == torch.device("cpu") and pipe._execution_device == torch.device("cpu")
    assert offload.moves == []  # placing moves nothing to the compute device
    views, gaussians = image_to_gaussians(pipe, lgm)

    onloaded = [name for name, where in offload.moves if where == "compute"]
    assert onloaded == IMAGEDREAM_ORDER + ["lgm"], offload.moves  # the VAE runs twice: encode, decode
    on_compute = set()
    for name, where in offload.moves:  # every onload follows the offload of the model there before
        if where == "compute":
            assert not on_compute, (name, offload.moves)
            on_compute.add(name)
        else:
            on_compute.remove(name)
    assert on_compute == {"lgm"} and offload.active is lgm  # stays until another model runs
    offload.offload_all()
    assert offload.moves[-1] == ("lgm", "storage") and offload.active is None

    np.testing.assert_array_equal(views, reference[0])
    assert torch.equal(gaussians, reference[1])


def test_sequential_offload_keeps_weights_out_of_the_modules_between_forwards(reference):
    offload, pipe, lgm = tiny_models("sequential")
    leaves = {"unet": next(m for m in pipe.unet.modules() if isinstance(m, nn.Conv2d)), "lgm": lgm.conv}
    seen = {name: [] for name in leaves}

    def spy(name, leaf):  # the weight's device while the layer's own forward runs
        run = leaf._old_forward  # accelerate's hook wraps this call with onloading and offloading

        def forward(*args, **kwargs):
            seen[name].append(leaf.weight.device.type)
            return run(*args, **kwargs)

        leaf._old_forward = forward

    for name, leaf in leaves.items():
        spy(name, leaf)
    assert execution_device(lgm) == torch.device("cpu") and pipe._execution_device == torch.device("cpu")

    views, gaussians = image_to_gaussians(pipe, lgm)
    assert seen["unet"] == ["cpu"] * 2 and seen["lgm"] == ["cpu"], seen  # 2 denoising steps; 1 forward_gaussians
    for module in (pipe.text_encoder, pipe.image_encoder, pipe.unet, pipe.vae, lgm):
        assert {p.device.type for p in module.parameters()} == {"meta"}, type(module).__name__
    np.testing.assert_array_equal(views, reference[0])
    assert torch.equal(gaussians, reference[1])


def test_none_places_everything_on_the_compute_device_and_unknown_modes_are_refused():
    module = Offload("none", "cpu").place(nn.Linear(2, 2).double(), "linear")
    assert not hasattr(module, "_hf_hook") and module.weight.device.type == "cpu"
    assert OFFLOAD_MODES == ("none", "model", "sequential")
    with pytest.raises(ValueError, match="none, model, sequential"):
        Offload("fast")
    assert "nothing moves" in Offload("model", "cpu").describe()


def test_infer_offload_modes_write_the_same_gaussians(assets, tmp_path, offline, capsys):
    """infer.py on an image with the tiny ImageDream: --offload none, model and sequential write the same
    .ply and views, bit for bit (offload moves weights, never changes an operation)."""
    common = [assets["image"], "--preset", PRESET, "--resume", assets["ckpt"], "--mv-model", assets["imagedream"],
              "--steps", 2, "--video-frames", 2]
    gaussians, times = {}, {}
    for mode in OFFLOAD_MODES:
        ws = tmp_path / mode
        t0 = time.perf_counter()
        assert infer.main([str(a) for a in [*common, "--workspace", ws, "--offload", mode]]) == 0
        times[mode] = time.perf_counter() - t0
        out = capsys.readouterr().out
        assert (f"offload {mode}:" in out) == (mode != "none"), out
        gaussians[mode] = load_ply(ws / "object.ply")
        np.testing.assert_array_equal(read_image(ws / "object_mv.png"), read_image(tmp_path / "none" / "object_mv.png"))
    for mode in OFFLOAD_MODES:
        assert torch.equal(gaussians[mode], gaussians["none"]), mode
    with capsys.disabled():
        print("\n[tiny image -> 3D on the CPU: " + ", ".join(f"{m} {s:.1f} s" for m, s in times.items()) + "]")


def test_measure_run_times_a_run_and_raises_on_failure(assets, tmp_path, offline):
    from core.images import write_image

    write_image(tmp_path / "four.png", np.concatenate([np.full((32, 32, 3), v, np.float32) for v in (0.2, 0.4, 0.6, 0.8)], 1))
    seconds, peak = infer.measure_run(["--views", tmp_path / "four.png", "--preset", PRESET, "--resume", assets["ckpt"],
                                       "--workspace", tmp_path / "ws", "--video-frames", 0, "--offload", "model"])
    assert seconds > 0 and (peak is None) == (not torch.cuda.is_available())
    assert (tmp_path / "ws" / "four.ply").is_file()
    with pytest.raises(RuntimeError, match="exited with code 2"):
        infer.measure_run(["--views", tmp_path / "missing.png", "--preset", PRESET, "--resume", assets["ckpt"]])


@pytest.mark.gpu
def test_offload_lowers_peak_gpu_memory_and_keeps_the_gaussians(assets, tmp_path, offline):
    """On CUDA (fp16), with the tiny models: the peak memory of a run is lower with model and sequential
    offload than with none (the models that are not running wait on the CPU), and the Gaussians agree."""
    common = [assets["image"], "--preset", PRESET, "--resume", assets["ckpt"], "--mv-model", assets["imagedream"],
              "--steps", 2, "--video-frames", 2, "--device", "cuda"]
    infer.measure_run([*common, "--workspace", tmp_path / "warm-up"])  # cuBLAS / cuDNN workspaces, kernels
    peaks, gaussians = {}, {}
    for mode in OFFLOAD_MODES:
        _, peaks[mode] = infer.measure_run([*common, "--workspace", tmp_path / mode, "--offload", mode])
        gaussians[mode] = load_ply(tmp_path / mode / "object.ply")
    print(f"peak GiB: {peaks}")
    assert peaks["model"] < peaks["none"] and peaks["sequential"] < peaks["none"], peaks
    for mode in ("model", "sequential"):
        torch.testing.assert_close(gaussians[mode], gaussians["none"], atol=1e-3, rtol=1e-3)
