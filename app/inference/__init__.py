"""Model loading and the batching engine: request queue, engine core, output sink, scheduler, model runner, sampler, stops."""
