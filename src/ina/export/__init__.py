"""Export an InA adapter as the LoRA that best reproduces it, for engines that serve LoRA only (`ina export lora`).

The room's parts: `calibration` (text), `capture` (forward hooks: each layer's x and Δ), `fit` (the closed
form), `lora` and `gguf_lora` (the files), `fidelity` and `report` (how close), `export` (the recipe).
"""
