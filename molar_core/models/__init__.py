"""User models: SASRec over item ids, and (later) the content user model over cached item vectors."""
