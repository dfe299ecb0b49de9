"""Fused segment forward of Infini-attention: local causal attention (rotary), memory read, gate mix."""
