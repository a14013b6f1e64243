"""RL building blocks: advantages, KL penalties, potentials and transforms, importance weights, experience."""
