"""Defaults with more than one reader, stated once.

The workflow schema (``config.load_schema``) injects these as the defaults of its ``engine`` and ``sim``
sections, and ``kvharness sim`` uses them for its flags, so a cell and a hand-started simulator run the
same engine unless told otherwise.
"""

ENGINE = {
    "tokens_per_block": 32,   # KV block size in tokens
    "max_batch_size": 64,     # most sequences in one engine step
    "max_num_tokens": 8192,   # most tokens in one engine step (chunked-prefill bound)
    "eviction_policy": "lru",
}

SIM = {
    "speedup": 20.0,            # modelled time / speedup (1 = real time)
    "block_bytes_scale": 0.001,  # tier-2 files hold this fraction of the modelled block bytes
    "seed": 0,
}
