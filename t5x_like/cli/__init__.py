"""The command line: the only place argv is parsed and gin is loaded; nothing imports it.

  main               the `t5x-like` dispatcher (console entry point)
  configurables      every gin configurable, registered in one place
  gin_loading        --gin_file / --gin.X=V handling; gin files -> plain library objects
  jax_platforms      JAX_PLATFORMS when unset (cpu, or cuda,cpu, on hosts without TPU chips)
  train, eval, size, compare, vocab, convert, analyze_attention, compile
                     one module per subcommand, each with main(argv) -> int
"""
