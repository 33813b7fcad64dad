"""rnnkern with the rest of PyTorch (TorchScript, ONNX, export, compile, func, DDP) and as a package."""
