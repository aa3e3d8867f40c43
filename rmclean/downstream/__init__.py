"""Does denoising the preference data give a better policy? The policy stages of
``rmclean compare``: best-of-n (``--stage bon``) and PPO (``--stage ppo``) against a gold reward
model that never trains, with proxy reward models trained on planted label flips, denoised or
not (``design``: the split, the gold model, the proxies; ``config``: the experiment file)."""

from .bon import (
                     best_of_n,
                     bon_kl,
                     bon_markdown,
                     bon_record,
                     bon_weights,
                     compare,
                     expected_pick,
                     write_bon,
)
from .config import (
                     DOWNSTREAM_DENOISERS,
                     BestOfNConfig,
                     DownstreamConfig,
                     DownstreamSettings,
                     PPOStageConfig,
                     read_downstream_config,
)
from .design import RoutedHeads, heldout_split, make_design, sample_prompts
from .ppo import policy_stage, ppo_markdown, ppo_record, write_policy_stage

__all__ = ["DOWNSTREAM_DENOISERS", "BestOfNConfig", "DownstreamConfig", "DownstreamSettings", "PPOStageConfig",
           "RoutedHeads", "best_of_n", "bon_kl", "bon_markdown", "bon_record", "bon_weights", "compare",
           "expected_pick", "heldout_split", "make_design", "policy_stage", "ppo_markdown", "ppo_record",
           "read_downstream_config", "sample_prompts", "write_bon", "write_policy_stage"]
