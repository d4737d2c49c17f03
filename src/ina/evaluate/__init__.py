"""`ina eval`: lm-evaluation-harness on a base causal LM and its InA / LoRA adapters, with ina's offline tasks.

`runner` runs lm-eval (one model loaded, adapters switched), `heldout` builds the offline data from the
embedded sources (held out of `ina finetune`'s data), `tasks/` holds the lm-eval task YAMLs, `report`
writes the table.
"""
