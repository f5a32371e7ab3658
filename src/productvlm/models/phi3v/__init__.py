"""Native Phi-3-vision: configuration, model, image processor and processor.

Importing this package registers the classes with transformers' Auto classes under the Hub's
model_type ``phi3_v``, so that, with ``trust_remote_code=False``::

    import productvlm.models.phi3v  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoProcessor
    model = AutoModelForCausalLM.from_pretrained("microsoft/Phi-3-vision-128k-instruct")

loads our implementation; the Hub's ``auto_map`` (remote code) is never executed.
"""

from __future__ import annotations

from importlib.util import find_spec

from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoProcessor

from .configuration import Phi3VConfig

AutoConfig.register("phi3_v", Phi3VConfig, exist_ok=True)

# The modules below are written in parallel; a missing one is skipped, a broken one raises.
Phi3VForCausalLM = Phi3VImageProcessor = Phi3VProcessor = None
if find_spec(f"{__name__}.modeling") is not None:
    from .modeling import Phi3VForCausalLM

    AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
if find_spec(f"{__name__}.image_processing") is not None:
    from .image_processing import Phi3VImageProcessor

    AutoImageProcessor.register(
        Phi3VConfig, image_processor_classes={"pil": Phi3VImageProcessor}, exist_ok=True
    )
if find_spec(f"{__name__}.processing") is not None:
    from .processing import Phi3VProcessor

    AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)

from .family import PHI3V  # noqa: E402  (the family object: productvlm.models.families)

__all__ = ["PHI3V", "Phi3VConfig", "Phi3VForCausalLM", "Phi3VImageProcessor", "Phi3VProcessor"]
