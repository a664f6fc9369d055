"""Quantization: weight-only int8/int4 linears (RTN at load; the format AWQ can fill)."""
