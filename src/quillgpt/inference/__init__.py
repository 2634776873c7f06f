"""Running a trained model: loading a run for generation and int8 quantization.

* :mod:`~quillgpt.inference.loading` -- open a checkpoint (fp32 or int8) with its tokenizer and
  stream text from it (what ``quill generate`` and ``quill eval`` share).
* :mod:`~quillgpt.inference.quantize` -- int8 dynamic quantization of the linear layers.
* :mod:`~quillgpt.inference.quantized_linear` -- one int8 linear layer, by either backend.
* :mod:`~quillgpt.inference.quantized_checkpoint` -- save and load int8 models, pickle-free.
"""

from quillgpt.inference.loading import LoadedModel, load_for_inference, stream_text

__all__ = ["LoadedModel", "load_for_inference", "stream_text"]
