"""Gaussian rasterizer backends: ``torch_backend`` (pure PyTorch, any device, tiled and exact) and
``gsplat_backend`` (fused CUDA kernels of the gsplat library); ``core.gs.GaussianRenderer`` picks one.
``reference`` is the plain, slow renderer the torch backend is tested against."""
