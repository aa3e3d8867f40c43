"""The bundled trainers: the reward-model trainer (``reward``) and the per-pair losses every
trainer reads (``losses``)."""
