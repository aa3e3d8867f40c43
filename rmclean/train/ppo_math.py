"""The arithmetic of a PPO-max update (SPEC 2.5), free of models and files: reward scaling,
per-token rewards with the KL penalty, GAE, whitening, the clipped losses and KL estimates. Every
tensor is ``(batch, response)`` with a 0/1 ``mask`` of the response tokens unless said otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RunningMoments:
    """Running mean and std of a stream of scores (Chan et al.'s parallel update, as MOSS-RLHF)."""

    def __init__(self, mean: float = 0.0, var: float = 1.0, count: float = 1e-24):
        self.mean, self.var, self.count = mean, var, count

    @property
    def std(self) -> float:
        return float(np.sqrt(self.var * self.count / max(self.count - 1, 1e-24)))

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        delta = values.mean() - self.mean
        total = self.count + values.size
        old = self.var * self.count + delta**2 * self.count * values.size / total
        self.var = (old + values.var() * values.size) / total
        self.mean += delta * values.size / total
        self.count = total

    def state(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}


def scale_scores(scores: np.ndarray, ended: np.ndarray, moments: RunningMoments, *, missing_eos_penalty: float,
                 reward_clip: float) -> np.ndarray:
    """Scores as PPO reads them ``(batch,)``: ``missing_eos_penalty`` off the responses that did
    not end, then (after updating the running moments) divided by the running std and clipped
    to ±``reward_clip``."""
    penalised = np.asarray(scores, dtype=np.float64) - missing_eos_penalty * (~np.asarray(ended, dtype=bool))
    moments.update(penalised)
    return np.clip(penalised / max(moments.std, 1e-8), -reward_clip, reward_clip)


def token_rewards(scores, logprobs, ref_logprobs, mask, beta: float):
    """Per-token rewards ``(batch, response)``: −β (log π − log π_ref) on response tokens and
    the score added on each response's last token."""
    import torch

    rewards = -beta * (logprobs - ref_logprobs) * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards[torch.arange(rewards.shape[0]), last] += torch.as_tensor(scores, dtype=rewards.dtype, device=rewards.device)
    return rewards


def gae(rewards, values, mask, gamma: float, lam: float):
    """Advantages and returns ``(batch, response)`` by generalised advantage estimation; every
    episode ends at its last masked token (the value after it is 0)."""
    import torch

    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    width = rewards.shape[1]
    for t in reversed(range(width)):
        carry = mask[:, t + 1] if t + 1 < width else torch.zeros_like(running)
        next_value = values[:, t + 1] * carry if t + 1 < width else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running * carry
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values, mask, eps: float = 1e-8):
    """``values`` with mean 0 and std 1 over the masked entries (0 elsewhere)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * (var + eps).rsqrt() * mask


def ppo_losses(new_logprobs, old_logprobs, advantages, new_values, old_values, returns, mask, *,
               clip: float, value_clip: float) -> dict[str, Any]:
    """The clipped policy loss (ratio clipped to 1 ± ``clip``) and the clipped value loss
    (values within ± ``value_clip`` of the rollout's) of PPO-max on one minibatch, with their clip
    fractions and the approximate KL between the new and the rollout policy."""
    import torch

    log_ratio = (new_logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    policy_loss = masked_mean(torch.max(unclipped, clipped), mask)
    values_clipped = old_values + torch.clamp(new_values - old_values, -value_clip, value_clip)
    value_error, clipped_error = (new_values - returns) ** 2, (values_clipped - returns) ** 2
    value_loss = 0.5 * masked_mean(torch.max(value_error, clipped_error), mask)
    with torch.no_grad():
        return {"policy_loss": policy_loss, "value_loss": value_loss,
                "policy_clip_fraction": masked_mean((clipped > unclipped).float(), mask).item(),
                "value_clip_fraction": masked_mean((clipped_error > value_error).float(), mask).item(),
                "approx_kl": masked_mean(ratio - 1 - log_ratio, mask).item()}


def kl_estimates(logprobs, ref_logprobs, mask) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode KL to the reference, ``(batch,)`` each: k1 = Σ log(π/π_ref) and k3 = Σ (r − 1 − log r),
    r = π_ref / π, over the response tokens."""
    import torch

    log_ratio = (ref_logprobs - logprobs) * mask
    k1 = (-log_ratio).sum(-1)
    k3 = ((torch.exp(log_ratio) - 1 - log_ratio) * mask).sum(-1)
    return k1.cpu().numpy(), k3.cpu().numpy()


__all__ = ["RunningMoments", "gae", "kl_estimates", "masked_mean", "ppo_losses", "scale_scores", "token_rewards",
           "whiten"]
