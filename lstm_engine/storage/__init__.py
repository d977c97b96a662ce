"""What goes to disk: the atomic write, the checkpoint format, the run directory, PyTorch interop."""
