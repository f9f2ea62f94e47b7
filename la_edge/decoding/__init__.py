"""Layer 1, pure decoding math: parameters, the NumPy specification, the C binding, the RNG.

Nothing here knows about models, threads or HTTP.
"""
