"""Named figure and widget functions used by the notebooks, one submodule per topic.

``attention`` (layer masks, indexer picks, attention mass), ``costs`` (KV cache and FLOPs),
``model`` (schedules, compressor windows, indexer scores, mHC, MoE load, scaling), ``eval`` (needles,
long-context curves, attention mass by needle distance), ``training`` (loss curves by phase,
optimisers), ``quant`` (FP8 / FP4 grids), ``widgets`` (interactive explorers).  Each function returns a
matplotlib Figure (or an ipywidgets box) and never calls pyplot.show().
"""
from . import attention, costs, eval, model, quant, training, widgets  # noqa: F401
