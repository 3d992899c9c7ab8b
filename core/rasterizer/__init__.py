"""Gaussian rasterizer backends: ``torch_backend`` (pure PyTorch, any device, the reference) and
``gsplat_backend`` (fused CUDA kernels of the gsplat library). ``core.gs.GaussianRenderer`` picks one."""
