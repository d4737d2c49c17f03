"""The adapter: InA's equation, its layer on PEFT's LoRA variant hook, its config, model and formats.

Importing any part of the core registers ``peft_type: "INA"`` with PEFT (once).
"""

from ina.core.registry import register as _register

_register()
