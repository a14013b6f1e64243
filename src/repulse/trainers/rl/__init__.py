"""train_ppo's recipe, read top-down: config (the typed run config) -> build (reward source, models, prompts,
optimizers, the mode's trainer) -> run (resume, the loop, outputs) -> loop (the RL loop: each step calls a
trainer's make_experience, update, report) -> ppo | twist | harmlessness (the trainers) -> proposal (q's loss),
steps (micro-batches, accumulation, the guarded optimizer steps), evals, models."""
