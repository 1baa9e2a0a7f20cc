"""Speed benchmarks (`slimsam bench`): latency, throughput, memory and profiles of encoders and decoders."""
