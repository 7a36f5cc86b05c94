"""Model parts, each a plain ``nn.Module`` with explicit channel counts (no registries)."""
