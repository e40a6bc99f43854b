"""What RLHF does, measured on trained runs: reward-model imprints, resistance and robustness
(`seal`), gold-invariant rewrites of the review world (`rewrites`), reward models as text
scorers (`reward_models`, and `pretrained_reward` for Hugging Face sequence-classification
checkpoints), influence of training pairs on a target loss (`datainf`, and `attribution` for
the pairs of a trained reward model), an evaluator's error rates on weighted outputs
(`evaluators`)."""
