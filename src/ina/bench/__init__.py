"""`ina bench`: step time, memory and decoding speed of InA against the frozen base and PEFT LoRA."""
