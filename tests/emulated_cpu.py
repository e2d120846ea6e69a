"""The CPU set-up shared by the test suite and the worker processes it starts: emulated devices, cheap
compiles, and programs compiled once per group of worker processes.

`use_cpu_devices` must run before jax is first imported: XLA reads its flags when jax starts.
"""

import os

# Low XLA optimisation halves the compile time of the tiny programs, which dominates this suite on
# small CPUs. XLA's older CPU fusion emitters (not the newer ones), and one LLVM module per program (not
# split for threads the workers do not have), halve it once more (the tiny U-Net's train step: 5 s of
# CPU, not 10).
CHEAP_COMPILES = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
                  "--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1")


def use_cpu_devices(count: int) -> None:
    """Run jax on `count` emulated CPU devices with cheap compiles (other XLA flags already set are kept)."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                        f"--xla_force_host_platform_device_count={count}", *CHEAP_COMPILES])


def compile_once_per_host() -> None:
    """Process 0 of a multi-process run compiles each program and hands it to the others, which wait for it.

    JAX does this (`jax_share_binary_between_hosts`) by the programs' persistent-cache keys, but on CPU
    a key hashes the topology of each process's own devices, so two processes on one host never agree
    on it. Hashed by device kind instead, the keys agree: each program of a process group is compiled
    once, not once per process, and a rerun finds the programs process 0 wrote in the persistent
    cache (`$DREAMIX_COMPILATION_CACHE`, which this turns on).
    """
    import jax
    from jax._src import cache_key

    from dreamix_jax import compile_cache

    cache_key._hash_accelerator_config = cache_key._hash_devices
    jax.config.update("jax_share_binary_between_hosts", True)
    compile_cache.enable()
