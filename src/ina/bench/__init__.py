"""Benchmarks: training steps, memory and decoding of InA against the frozen base and PEFT LoRA (`ina bench`),
and load on `ina serve` (`ina bench serve`)."""
