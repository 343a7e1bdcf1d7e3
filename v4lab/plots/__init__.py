"""Named figure functions used by the notebooks (each submodule is one topic)."""
