"""Model: load a model and run it. adapters (where each architecture writes into the residual
stream), load (Hugging Face folders, hub ids, GGUF files and the embedded default), collect (batched
forward passes with hooks: residual-stream means and last-position logits), generation (greedy answers
as plain strings), interop (the same model read with nnsight or TransformerLens)."""
