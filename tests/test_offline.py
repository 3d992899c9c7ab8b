"""Without network, code that would download fails at once with its clear message: the network is
probed once per host (core.hub.download_blocker), and no download library is asked to retry."""

from __future__ import annotations

import socket
import threading

import pytest

import core.hub as H
import core.weights as W


@pytest.fixture
def no_network(monkeypatch):
    """Offline flags unset, every host unreachable (as on a machine without internet)."""
    monkeypatch.delenv("LGM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probes = []

    def probe(host, timeout, port=443):
        probes.append(host)
        return False

    monkeypatch.setattr(H, "_probe", probe)
    monkeypatch.setattr(H, "_reachable", {})
    return probes


def test_probe_tells_an_open_port_from_a_closed_one():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    assert H._probe("127.0.0.1", 2.0, port=port)
    server.close()
    assert not H._probe("127.0.0.1", 2.0, port=port)


def test_each_host_is_probed_once(no_network):
    assert "cannot be reached" in H.download_blocker("huggingface.co")
    assert "cannot be reached" in H.download_blocker("huggingface.co")
    assert H.download_blocker("github.com") is not None
    assert no_network == ["huggingface.co", "github.com"]


def test_lgm_weights_are_only_looked_up_in_the_cache(no_network, monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def fake_download(repo, name, local_files_only=False, **kw):
        calls.append(local_files_only)
        raise FileNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(W.WeightsNotFoundError, match="(?s)download_weights.py --only lgm.*huggingface.co cannot be reached"):
        W.fetch_published_weights(tmp_path / "model_fp16_fixrot.safetensors")
    assert calls == [True]  # a cache lookup, never a download with retries


def test_vgg_backbone_is_not_downloaded(no_network, monkeypatch, tmp_path):
    import torch

    import core.metrics

    monkeypatch.setattr(core.metrics.hub, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download VGG16"))
    with pytest.raises(core.metrics.LPIPSUnavailableError, match="download.pytorch.org cannot be reached"):
        core.metrics.build_lpips(pretrained_backbone=True)


def test_multiview_model_from_the_hub_is_not_downloaded(no_network, monkeypatch, tmp_path):
    import core.mvdiffusion.pipeline as P

    calls = []
    monkeypatch.setattr(P, "download_diffusers_repo", lambda repo, local_files_only=False, **k: calls.append(local_files_only) or (_ for _ in ()).throw(FileNotFoundError()))
    with pytest.raises(W.WeightsNotFoundError, match="huggingface.co cannot be reached"):
        P.resolve_pipeline_folder(tmp_path / "imagedream-ipmv-diffusers")
    assert calls == [True]


def test_download_script_fails_fast_without_network(no_network, monkeypatch, capsys):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("download_weights", ROOT / "scripts" / "download_weights.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(__import__("sys").modules, "download_weights", script)  # dataclasses look it up
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "download_blocker", H.download_blocker)
    for name in ("fetch_lgm", "fetch_diffusers", "fetch_rembg", "fetch_vgg"):
        monkeypatch.setattr(script, name, lambda *a, **k: pytest.fail("tried to download"))
    assert script.main(["--only", "lgm", "vgg", "--out", str(ROOT / "pretrained")]) == 1
    err = capsys.readouterr().err
    assert "lgm: FAILED (huggingface.co cannot be reached" in err and "vgg: FAILED (download.pytorch.org" in err
