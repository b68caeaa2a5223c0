"""The conformance suites and the gpuconform command line."""
