"""The PyTorch runner."""
