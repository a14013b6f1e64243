"""RL building blocks: rollouts (samples with their log-probs), experience, reward sources, potentials and
transforms, advantages and baselines, KL penalties."""
