"""Numbers published by the papers the experiments reproduce, with where they come from.

The experiments print these beside their own results. They are the papers' figures, not
ours; where a figure was read from a transcription rather than the paper's PDF, the entry
says so (`source`), and an experiment quoting it should say so too.
"""

from __future__ import annotations

LIPO = {
    "citation": "Liu et al., LiPO: Listwise Preference Optimization through Learning-to-Rank, "
                "arXiv 2402.01878, Table 1",
    "setting": "T5-large policy, K = 8 responses per prompt, win rate (%) against the SFT "
               "target under a proxy (PaLM-2 based) reward model",
    # loss -> (Reddit TL;DR, Anthropic HH)
    "win_rate": {
        "point_mse": (49.43, 57.55),
        "point_sigmoid": (64.14, 71.35),
        "softmax": (75.40, 73.21),
        "pair_hinge": (87.23, 89.68),
        "pair_logistic": (88.52, 91.11),
        "list_mle": (88.27, 90.61),
        "lipo_lambda": (90.60, 92.60),
    },
    "list_sizes": (2, 4, 8, 16, 32),
    "claims": (
        "pointwise losses are worst, softmax (ListNet) next",
        "LiPO-lambda beats pair-logistic (DPO_BT)",
        "only LiPO-lambda improves steadily as the list size K grows",
        "the DCG lambda weight beats its ablations (constant gain / constant discount / none)",
    ),
}

NASH_MD = {
    "citation": "Munos et al., Nash Learning from Human Feedback, arXiv 2312.00886, Table 1",
    "source": "transcription (check against the paper before quoting)",
    "setting": "TL;DR summarisation, T5-based policies, win rate against the RLHF policy "
               "judged by a preference model",
    # mixture coefficient beta -> win rate against RLHF (beta = 0: self-play; 1: best response to mu)
    "win_rate_vs_rlhf": {0.0: 0.489, 0.125: 0.598, 0.25: 0.519, 0.375: 0.561, 0.5: 0.501,
                         0.625: 0.436, 0.75: 0.284, 1.0: 0.148},
    "claims": (
        "win rate against RLHF is unimodal in beta, best at a small positive beta",
        "worst at beta = 1 (best response to the reference)",
    ),
}

ONLINE_IPO = {
    "citation": "Calandriello et al., Human Alignment of Large Language Models through Online "
                "Preference Optimisation, arXiv 2403.08635, Table 2",
    "source": "transcription (only the ordering and one pairwise figure are recorded)",
    "setting": "TL;DR, round-robin of policies judged by a preference model",
    "ordering": "IPO ≈ IPO-MD > DPO ≈ SLiC ≈ Nash-MD-PG > RL",
    "win_rate": {("online_ipo", "ppo"): 0.791},
    "claims": (
        "online IPO and IPO-MD are at the top of the round-robin, about equal",
        "RL (PPO on a reward model) is at the bottom",
        "online beats offline for DPO and for IPO",
    ),
}

OVEROPTIMIZATION = {
    "citation": "Gao et al., Scaling Laws for Reward Model Overoptimization, arXiv 2210.10760; "
                "Stiennon et al., Learning to summarize from human feedback, arXiv 2009.01325",
    "forms": {"bon": "R(d) = d (alpha - beta d)", "rl": "R(d) = d (alpha - beta log d)",
              "d": "sqrt(KL(pi || pi_init))"},
    "stiennon": {"kl_coef": 0.05, "final_kl_nats": 18.0, "policy": "1.3B"},
    "claims": (
        "gold reward rises then falls as the policy moves away from the initial one, while "
        "the proxy reward keeps rising",
        "larger proxy reward models (more parameters or data) over-optimise later",
        "a KL penalty moves along the same gold-vs-KL frontier rather than above it",
        "the functional forms fit the gold curves (best-of-n: d(alpha - beta d); "
        "RL: d(alpha - beta log d))",
    ),
}

DPO = {
    "citation": "Rafailov et al., Direct Preference Optimization, arXiv 2305.18290, Figure 2 "
                "(left): reward against KL on IMDb sentiment generation",
    "setting": "GPT-2-large, sentiment classifier as the ground-truth reward; DPO at several "
               "beta and PPO at several KL targets, PPO with the learned reward and with the "
               "ground-truth reward (PPO-GT)",
    "claims": (
        "DPO's reward-KL frontier is at least as good as PPO's (even PPO with the "
        "ground-truth reward) over the shared KL range",
    ),
}

IPO = {
    "citation": "Azar et al., A General Theoretical Paradigm to Understand Learning from "
                "Human Preferences, arXiv 2310.12036, Section 5 / Figure 1",
    "claims": ("DPO goes deterministic for every tau on D1; IPO converges to a regularised "
               "optimum that depends smoothly on tau",),
}

SEAL = {
    "citation": "Revel et al., SEAL: Systematic Error Analysis for Value ALignment, "
                "arXiv 2408.10270",
    "source": "the paper's summary figures as transcribed for this project (check against the "
              "paper before quoting)",
    "setting": "reward models fine-tuned on Anthropic hh-rlhf (alignment data D), features "
               "(target values and spoilers) tagged by an LM",
    # Share of D by regime, between the reward model before and after training on D.
    "regimes": {"stayed": 0.483, "got": 0.258, "resisted": 0.172, "reversed": 0.087},
    "agreement_pre": 0.57,   # the untrained reward model agrees with the human labels
    "agreement_post": 0.74,  # the trained one
    # Alignment resistance (post model against the label) where LM labellers disagreed with
    # the human label.
    "resistance_where_labelers_disagree": 0.26,
    "claims": (
        "reward models show strong imprints of target features (desired values)",
        "they are notably sensitive to spoiler features (undesired concepts)",
        "alignment resistance concentrates where the label is ambiguous or contested",
        "small rewrites of the texts change the reward models' preferences",
    ),
}

DATAINF = {
    "datainf": {
        "citation": "Kwon et al., DataInf: Efficiently Estimating Data Influence in "
                    "LoRA-tuned LLMs and Diffusion Models, arXiv 2310.00902",
        "method": "closed-form inverse-Hessian-vector product per layer: the inverse of the "
                  "damped mean of g gᵀ replaced by the mean of the (Sherman–Morrison) inverses, "
                  "λ_l = 0.1 · mean squared gradient of layer l",
        "claims": (
            "DataInf approximates influence scores more accurately than LiSSA and "
            "Hessian-free baselines, and faster",
            "its approximation error is small for low-dimensional parameter blocks, which "
            "suits LoRA-tuned models",
            "influence by DataInf identifies mislabelled training examples",
        ),
    },
    "trust": {
        "citation": "Li et al., More RLHF, More Trust? On The Impact of Preference Alignment "
                    "On Trustworthiness, arXiv 2404.18870",
        "claims": (
            "RLHF on general-purpose preference data does not guarantee trustworthiness "
            "(toxicity, stereotypical bias, machine ethics, truthfulness, privacy)",
            "influence-based data attribution (DataInf adapted to RLHF) identifies which "
            "fine-tuning pairs move each trust vertical",
        ),
    },
}

SOPHISTRY = {
    "citation": "Wen et al., Language Models Learn to Mislead Humans via RLHF, "
                "arXiv 2409.12822 (U-Sophistry)",
    "setting": "RLHF against time-limited human evaluators on question answering (QuALITY) and "
               "programming (APPS)",
    # Rise in the evaluators' false-positive rate (approving a wrong output), in points.
    "false_positive_rate_rise": {"QuALITY": 24.1, "APPS": 18.3},
    "claims": (
        "RLHF makes the policy better at convincing time-limited human evaluators that it is "
        "right, but not better at the task: correctness stays flat",
        "the evaluators' false-positive rate rises (24.1 points on QuALITY, 18.3 on APPS)",
    ),
    "critique": {
        "source": "an ICLR 2026 blog post on the paper",
        "claims": (
            "the effect depends on what the evaluators could see: the reward model never saw "
            "the story, so a faithful reproduction needs the control where it does",
        ),
    },
}
