"""UGround's learned layer selection (`ppm`, "policy-prompted masking"): in training, each [SEG] reads its
similarity map (and in mode 3 its SAM embedding) from a hidden-state entry sampled by a linear policy, trained by
REINFORCE with the similarity losses as (negative) reward. Inference always reads the final layer.

docs/families/uground.md section 4 has the definition this follows.
"""
from __future__ import annotations

import torch
from torch import nn

EMA_DECAY = 0.9  # the reference's baseline update b <- 0.9 b + 0.1 R


class LayerPolicy(nn.Module):
    """One gate vector per hidden-state entry (logit of entry l for a [SEG] = <its state at l, W[l]>), and the
    critic (probabilities -> baseline) when trained with a critic baseline.

    `reward_running_mean` is the EMA baseline; like the reference it lives in memory only (not in checkpoints:
    a resumed run restarts it at 0)."""

    def __init__(self, num_layers: int, hidden: int, critic_hidden: int | None):
        super().__init__()
        # zeros: a uniform policy (the reference zero-fills it before training)
        self._layer_gate_W_similarity = nn.Parameter(torch.zeros(num_layers, hidden))
        self.critic = None if critic_hidden is None else make_critic(num_layers, critic_hidden)
        self.reward_running_mean = 0.0

    def sample(self, seg_layer_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """seg_layer_states [N, E, H] -> (sampled entry [N] long, its log-probability [N], mean probabilities [E]).

        The states are detached: the policy learns only from its reward, never through the language model. All
        N are drawn in one call, as the reference does, so a seeded run draws the same entries."""
        gate = self._layer_gate_W_similarity
        logits = torch.einsum("nld,ld->nl", seg_layer_states.detach().to(gate.dtype), gate)
        dist = torch.distributions.Categorical(logits=logits)
        actions = dist.sample()
        return actions, dist.log_prob(actions), dist.probs.mean(0).detach()

    def reinforce_loss(self, reward: torch.Tensor, log_probs: torch.Tensor, probs_mean: torch.Tensor | None,
                       baseline_type: str, baseline_beta: float) -> torch.Tensor:
        """-mean((R - b) * log p) for the batch's [SEG]s. reward: 0-d, detached. EMA baseline: updated with R
        before use (from 0.0); critic baseline: critic(mean probabilities), plus beta * (b - R)^2 to train it."""
        r = reward.detach().float()
        if baseline_type == "critic":
            if self.critic is None:
                raise ValueError("baseline_type critic but the policy has no critic")
            baseline = self.critic(probs_mean[None].to(self.critic[0].weight.dtype))[0, 0]
            policy = -((r - baseline.detach()).to(log_probs.dtype) * log_probs).mean()
            return policy + baseline_beta * (baseline - r) ** 2
        self.reward_running_mean = EMA_DECAY * self.reward_running_mean + (1.0 - EMA_DECAY) * float(r)
        return -((r - self.reward_running_mean).to(log_probs.dtype) * log_probs).mean()


def make_critic(num_layers: int, hidden: int) -> nn.Sequential:
    """The critic baseline: mean layer probabilities [1, E] -> Linear -> ReLU -> Linear -> [1, 1]."""
    return nn.Sequential(nn.Linear(num_layers, hidden), nn.ReLU(), nn.Linear(hidden, 1))
