"""Making models fast and small: devices, mixed precision, quantization, profiling."""
