"""Tools built on training and inference: the profiler and the model-size sweep.

Nothing in the library imports them; ``quill profile`` and ``quill sweep`` do.
"""
