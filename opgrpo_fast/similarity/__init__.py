"""The similarity-estimator step of OP-GRPO: fine-tune a Sentence Transformer so that "same
perspective" scores high and "a different perspective on the same situation" scores low, then use
it as the reward's encoder (``OvertonReward(encoder=DIR)``).

Steps, each a module with a CLI (``python -m opgrpo_fast.similarity.<step> --help``):

* :mod:`.build_triplets` - per situation, (anchor, positive, hard negative) from its reference
  perspectives: base-model cosine filter, then a yes/no judge (:mod:`.judges`);
* :mod:`.train` - ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss``;
* :mod:`.evaluate` - base vs fine-tuned: triplet accuracies and the matching accuracies;
* :mod:`.demo` - all three on the bundled demo set, offline, on CPU.

Nothing heavy is imported here; the modules import torch / sentence-transformers themselves.
"""
