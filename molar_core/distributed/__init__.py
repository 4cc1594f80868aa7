"""Running stages beyond one process: Ray for embedding (an actor pool of item encoders), torch.distributed for
training. Optional: Ray is the `distributed` extra; nothing here is imported unless a param asks for it."""
