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
    # LoRA: resident adapter slots on the device (vLLM --max-loras, TRT-LLM lora_config.max_loras; 0 = LoRA
    # off), adapters cached in host memory (vLLM --max-cpu-loras, TRT-LLM max_cpu_loras; the simulator
    # has no host adapter cache and reads every miss from tier 2), and the bytes of one adapter (a rank-16
    # adapter on q/k/v/o of an 8B model in fp16 is 32 MiB; the simulator's files hold this x block_bytes_scale).
    "max_loras": 0,
    "max_cpu_loras": 0,
    "lora_adapter_bytes": 16 * 1024 ** 2,
}

SIM = {
    "speedup": 20.0,            # modelled time / speedup (1 = real time)
    "block_bytes_scale": 0.001,  # tier-2 files hold this fraction of the modelled block bytes
    "seed": 0,
}
