"""InA (Inhibition Adaptation) as a PEFT method.

    from peft import get_peft_model
    from ina import InAConfig

    model = get_peft_model(model, InAConfig(r=8, target_modules=["q_proj", "v_proj"], inhibition=0.3))

Importing ``ina`` registers ``peft_type: "INA"`` with PEFT, so ``PeftModel.from_pretrained`` and
``AutoPeftModelFor...`` load InA adapters.
"""

from ina.core.registry import register as _register

_register()

from ina.core.config import InAConfig, InAConfigError  # noqa: E402
from ina.core.functional import ina_delta, inhibit  # noqa: E402
from ina.core.layer import MergeRefusedError  # noqa: E402
from ina.core.loading import convert_adapter, load_adapter, read_adapter_config  # noqa: E402
from ina.core.model import InAModel, UnsupportedTargetError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "InAConfig",
    "InAConfigError",
    "InAModel",
    "MergeRefusedError",
    "UnsupportedTargetError",
    "__version__",
    "convert_adapter",
    "ina_delta",
    "inhibit",
    "load_adapter",
    "read_adapter_config",
]
