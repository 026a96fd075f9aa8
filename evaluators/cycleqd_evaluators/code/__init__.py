"""Code generation scored by running the generated code against tests in a sandbox."""
