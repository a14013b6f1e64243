"""`repulse NAME ...` and `python -m repulse.cli NAME ...`: dispatch to the command module repulse.cli.NAME."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "train_sft": "Supervised fine-tuning (prompt-masked or --pretrain_mode), LoRA, packing.",
    "train_rm": "Pairwise reward-model training (sigmoid / logexp), reward normalization.",
    "train_dpo": "Direct preference optimisation (DPO, IPO, cDPO, NLL term) against a frozen reference.",
    "train_kto": "KTO on unpaired desirable/undesirable examples with the KL reference point.",
    "train_kd": "Knowledge distillation: SFT loss plus KL(teacher || student).",
    "train_prm": "Process reward model: label tokens predicted at step markers (hard or soft labels).",
    "train_ppo": "PPO / REINFORCE, twist learning, and RePULSe harmlessness training with exact evaluation.",
    "train_ppo_ray": "train_ppo's PPO / REINFORCE and RePULSe on Ray workers (policy, reference, critic, reward).",
    "evaluate_gcg": "GCG attack per target (nanoGCG-compatible): ASR by reward, refusal prefix or judge, JSON report.",
    "evaluate_beast": "BEAST beam-search attack per target: ASR by reward, refusal prefix or judge, JSON report.",
    "estimate_rare_harmful_outputs": "P(rare target output) under an input distribution: ITGIS, MHIS, MC, exact.",
    "forecast_rare_outputs": "Worst-query risk Q_p(n) at deployment scale from a Gumbel-tail fit.",
    "batch_inference": "Generate (HF/vLLM, best-of-N) or score with a reward model; rs/csft/iter_dpo post-processing.",
    "interactive_chat": "Chat with a model in the terminal (history, clear/exit, streamed replies).",
    "lora_combiner": "Merge a LoRA adapter into its base LM or reward model, verified on a probe batch.",
    "serve_rm": "HTTP reward-model server (FastAPI): POST /get_reward, dynamic batching, validation, health.",
    "plot_frontier": "Reward vs exact P(bad) frontier and per-step curves (PNG) from train_ppo runs.",
    "demo": "RePULSe vs REINFORCE on the embedded toy: exact P(bad) before and after, frontier plot.",
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "usage: repulse COMMAND [flags]   (repulse COMMAND --help for its flags)\n\ncommands:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"repulse: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"repulse.cli.{name}")
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
