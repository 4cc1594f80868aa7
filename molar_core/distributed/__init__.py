"""Running stages beyond one process: Ray for embedding (an actor pool of item encoders: ray_cluster, ray_embed;
Ray is the `distributed` extra and is imported only with `embed.engine: ray`) and torch.distributed for
training (ddp: needs only torch, and does nothing unless a process group of more than one process exists)."""
