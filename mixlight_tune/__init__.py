"""The tuning pipeline beside the library: the miniature world (``mixlight_tune.miniature``),
the experiment protocol (``experiment``), reports and plots, and each backend's train and
score steps (``mixlight_tune.frameworks``). Heavy dependencies (torch, JAX, sentencepiece,
matplotlib) are imported only by the modules that need them."""
