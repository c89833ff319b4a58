"""Synthetic media for the sample corpus, the benchmarks and the tests: speech with known word times (synth.speech) and the sample corpus (synth.corpus)."""
