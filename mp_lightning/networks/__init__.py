"""Plain nn.Module networks, one file per family; they know nothing of Lightning."""
