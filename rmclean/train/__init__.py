"""The bundled trainers: reward-model losses (``losses``)."""
