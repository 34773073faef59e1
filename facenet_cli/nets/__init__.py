"""Plain nn.Modules, one file per family, and the registry that builds them by name."""
