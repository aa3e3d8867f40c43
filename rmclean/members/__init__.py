"""Ensemble members of each kind: seeded heads on frozen features (``heads``), fine-tuned
backbones (``finetune``) and trained reward models loaded for scoring (``reward_models``)."""
