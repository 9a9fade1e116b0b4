"""Model loading and the batching engine: scheduler, model runner, sampler and stop handling."""
